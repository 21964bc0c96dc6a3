"""The ClipForge operator: VideoCurationJob resources in, KubeRay RayJobs out.

Import-light on purpose: the operator image has no torch, av, ray or pyarrow, and importing
this package (or any module in it) must never pull them in.
"""
