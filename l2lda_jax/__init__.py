"""l2lda_jax: L2L-DA adversarial training (Jang et al., ICCV 2019) in JAX/Flax."""
