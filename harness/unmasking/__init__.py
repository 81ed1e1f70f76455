"""Samplers of masked diffusion shared by MDLM and BD3-LM (docs/models.md §2.3, §2.4): the
ancestral reveal plan (ancestral), ReMDM's reveal-and-remask plan (remdm), confidence-based
parallel decoding (confidence), block decoding with Fast-dLLM's approximate caches (blocks) and
the cache-exactness probe (probe)."""
