"""A CPU-sized, byte-level Qwen2-architecture model (0.85 M base parameters) for tests and smoke
runs: AHN-GDN trained on a random base.

Training reads the Shakespeare plays (four held out for evaluation) in 512-byte windows. No
pretrained base of this shape exists: the base is this config's random init (allow_random_base),
so its runs exercise the machinery, not the effect. The demo's pretrained base (the committed
ahn_jax/assets/demo_base) is configs/tiny_base.py's smaller model, built from MODEL below; the
demo distils on it with configs/demo_gdn.py.
"""

from ahn_jax.config import make_config

HELD_OUT = ("hamlet", "macbeth", "tempest", "twelfth_night")


MODEL = dict(
    vocab_size=256,  # UTF-8 bytes
    hidden_size=128,
    intermediate_size=384,
    num_layers=4,
    num_heads=2,
    num_kv_heads=1,
    head_dim=64,
    rope_theta=10_000.0,
    tie_word_embeddings=False,
    max_position_embeddings=4096,
)


def get_config():
    model = MODEL
    train = dict(
        steps=60,
        batch_size=8,
        seq_len=512,
        learning_rate=1e-3,
        window_choices=(64, 128, 256),
        sink_choices=(0, 4, 32),
        vocab_tile=256,
        checkpoint_every=20,
        output_dir="runs/tiny_gdn",
        log_every=5,
        allow_random_base=True,  # the base is this config's random init (see above)
    )
    data = dict(format="shakespeare", tokenizer="bytes", filter_len=64, cutoff_len=512,
                held_out=HELD_OUT)  # fmt: skip
    return make_config(model, ahn_type="gdn", train=train, data=data)
