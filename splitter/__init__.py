"""The offline splitter (torch): list cuts, quantize the cut, fit the scorer, export artifacts."""
