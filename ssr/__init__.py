"""Sequence Span Rewriting (Zhou et al.) on spactor's T5, SeqIO tasks and trainer; see docs/ssr.md.

masking     Poisson span masking (SeqIO preprocessor)       formatting  <s_i> </s_i> markers, SSR / fine-tuning formats
sampling    temperature / top-k / nucleus sampling          decoding    jitted infilling decoder with a KV cache
generate    python -m ssr.generate (sharded, resumable)     records     the generated TFRecord dataset
curriculum  difficulty groups, easy to hard                 tasks       SeqIO tasks (masking, SSR data)
params      T5 params from project checkpoints              continual   python -m ssr.continual (SSR or T5-cont)
demo        make demo-ssr
"""
