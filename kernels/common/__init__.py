"""What the kernel families share: the chunk math of the linear recurrences (`chunking`), the
Pallas inter-chunk scan that the delta rule and SSD both run (`inter_chunk_pallas`), the oracles'
checkpointed token scan (`scan`), the finite mask value (`masking`), scan carries under shard_map
(`varying`), the Pallas switches (`pallas_mode`) and TPU ahead-of-time compiles (`tpu_aot`)."""
