"""GAN metrics in the evaluator's feature space, one module per metric.

FID_fm (`frechet`), KID (`kid`), precision/recall (`precision_recall`), conditional accuracy
(`conditional_accuracy`), CAS (`cas`), intra-class SSIM (`ssim`). Every function takes plain arrays
so it can be tested without a generator; `models.evaluation` puts them together.
"""
