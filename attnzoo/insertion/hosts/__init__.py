"""Host adapters, one file per host family; importing this package registers them all.

resnet.py (attnzoo / torchvision / timm ResNets), cspnet.py (timm CSPNet / CSPDarknet), yolo.py
(attnzoo's YOLO-like blocks), mobilenet.py (inverted residuals / MBConv, torchvision and timm),
regnet.py (torchvision and timm RegNet), convnext.py (torchvision and timm ConvNeXt). Each module's
docstring lists its hosts' positions; ``attnzoo.insertion.host_adapters()`` lists them at run time.
"""
from __future__ import annotations

from . import resnet, cspnet, yolo, mobilenet, regnet, convnext  # noqa: F401  (order = registration order)

__all__: list[str] = []
