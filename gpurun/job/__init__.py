"""The orchestrator: one training run from plan to receipt (see `gpurun.job.run` for the flow)."""
