"""The non-rehearsal baselines, one file per method (Config, Plugin, Template): EWC, SI, LwF,
LFL, IMM, SGD-F, PackNet, PNN and PathNet; ``trunk_plan`` describes a trunk for the methods
that rebuild it (PNN, PathNet)."""
