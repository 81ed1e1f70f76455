"""Samplers of masked diffusion shared by MDLM and BD3-LM: the ancestral reveal plan, confidence-
based parallel decoding and the cache-exactness probe."""
