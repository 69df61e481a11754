"""The Slicer module's Qt-free part: its logic (``workflow``) and the bridge to MRML nodes (``mrml``).

They import slicer and VTK, so they are not part of the ``samprostate`` command-line package; they
live in the module's Lib package so that Slicer's scripted-module factory, which loads every
top-level ``.py`` of the module folder as a module, sees only ``SAMProstateSDG.py``.
"""
