"""Evaluation of both phases, one code path for the in-training callback and `scripts/evaluate.py`:
reconstruction metrics (PSNR/SSIM/LPIPS/rFID) for phase 1, sample quality (FID/KID, class accuracy)
for phase 2, sharded over the ranks of a run, with cached real-set statistics."""
