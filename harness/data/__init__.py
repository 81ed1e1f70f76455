"""Corpus, document-level splits, tokenizers and packing (docs/data.md).

Everything here works offline:

* the bundled corpus (``assets/corpus.jsonl.xz``, ~12 MB of English text:
  Wikipedia articles, Jane Austen's novels, Shakespeare's works; rebuilt and
  checked by ``scripts/build_corpus.py``, attribution in ``assets/NOTICE.md``);
* the GPT-2 BPE files vendored in ``assets/gpt2/`` (tiktoken is built from them
  locally and never asked to download anything);
* a small byte-level BPE trained on the training split for tiny CPU models.

Splits are made at the DOCUMENT level (article / novel / play), ordered by a
hash of (seed, source, title), so train/valid/test can never share a document
and the split does not depend on the order of the input list.  Each split is tokenised and
packed independently ("wrap" packing); results are cached on disk.

The package, one module per job:

* :mod:`~harness.data.corpus`: documents and their document-level split;
* :mod:`~harness.data.tokenizers`: GPT-2 BPE and the small byte-level BPE;
* :mod:`~harness.data.packing`: the documents protocol's packing and the split cache;
* :mod:`~harness.data.protocols`: the papers' protocols (OpenWebText, LM1B) on local datasets;
* :mod:`~harness.data.splits`: what a run reads (``build_tokenizer``, ``load_splits``).
"""

from harness.data.corpus import (ASSETS, BUNDLED_CORPUS, SMALL_SOURCE_PIECES, Document,  # noqa: F401
                                 load_bundled_corpus, load_corpus, load_text_files, split_documents)
from harness.data.packing import build_splits, cache_dir, cached_splits, file_sha256, pack  # noqa: F401
from harness.data.splits import build_tokenizer, load_splits, test_texts  # noqa: F401
from harness.data.tokenizers import (ENDOFTEXT, GPT2_DIR, MASK_TOKEN, ByteBPETokenizer,  # noqa: F401
                                     GPT2Tokenizer, Tokenizer, get_tokenizer, load_tokenizer)
