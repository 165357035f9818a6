"""Flax models: the classifiers of SPEC section 3."""

from l2lda_jax.models.classifiers import LeNet5, ResNet20, create_classifier

__all__ = ['LeNet5', 'ResNet20', 'create_classifier']
