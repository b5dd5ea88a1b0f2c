"""Model backends beside the default dlib models: which networks detect and embed faces.

The pipeline (``models.pipeline.FacePipeline``) stays one; what it runs is chosen here:

* ``dlib`` (default): dlib's MMOD detector, 5-point shape predictor and ResNet embedder,
  converted to PyTorch (``models.detector``, ``models.landmarks``, ``models.embedder``;
  ``models.backends.dlib`` names them for this package);
* ``onnx``: user-supplied ONNX files, added with ``faceserve models add``: face embedders
  such as the ArcFace family (``models.backends.onnx_embedder``) and SCRFD detectors that
  give the five points ArcFace chips are aligned on (``models.backends.scrfd``).

``models.backends.geometry`` says how each embedder wants its chips cut;
``models.backends.onnx_file`` holds the manifest, the model directory and the checks.
"""
