"""Integrations: edges between attnzoo and other libraries.

Each one imports attnzoo and its library; attnzoo's core never imports an integration, so a missing
optional dependency breaks only the integration that needs it.

* ``attnzoo.integrations.ultralytics`` -- attnzoo blocks in ultralytics YOLO models (``pip install attnzoo[ultralytics]``).
"""
