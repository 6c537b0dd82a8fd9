"""GPU providers behind one contract (`base.Provider`); adapters are plain httpx, no vendor SDKs."""
