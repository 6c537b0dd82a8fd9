"""Fake Vast.ai and RunPod APIs on 127.0.0.1 (real HTTP servers) and their pytest fixtures."""
