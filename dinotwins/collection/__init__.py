"""A whole image collection's embeddings, for galleries of millions: extraction into verified shards (under
torchrun across processes and machines), a FAISS index chosen by size and memory and tuned to a recall target,
and the reading side the explorer memory-maps.

- shards.py: the extraction folder's format (manifest, shards, their checks) and `Collection`, its reader;
- extract.py: `python -m dinotwins.extract MODEL --data SPEC --out DIR`;
- index.py: `python -m dinotwins.index DIR`;
- bench.py: `python -m dinotwins.bench --retrieval`, the index's build time, query latency and recall.
"""
