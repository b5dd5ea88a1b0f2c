"""Measured accuracy: the LFW View-2 protocol, verification metrics and operating points.

``pairs`` parses LFW pair lists, ``metrics`` computes the figures from similarity scores,
``lfw`` runs images through the service's pipeline, ``report`` writes the artefacts and
``profile`` the operating-point thresholds the service loads; ``commands`` is the CLI.
"""
