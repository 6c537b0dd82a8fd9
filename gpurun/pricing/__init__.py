"""Pure cost model: GPU throughput, per-phase time and dollars, and ranking by expected total cost. No I/O."""
