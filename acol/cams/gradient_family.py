"""More gradient-family localizers (the breadth of pytorch-grad-cam / torchcam), on the interface of
`acol.cams.localizers`: every rule of its docstring holds (eval mode, flags restored, no hooks or
`.grad` left, batch-exact, float32, works under `torch.no_grad()`).

| name | map |
|---|---|
| hirescam | sum_k dy^c/dA^k * A^k, element-wise, no ReLU (Draelos & Carin, 2020) |
| xgradcam | ReLU(sum_k w_k A^k), w_k = sum_ij A^k_ij / sum_ab A^k_ab * dy^c/dA^k_ij (Fu et al., 2020) |
| layercam | ReLU(sum_k ReLU(dy^c/dA^k) * A^k) (Jiang et al., 2021) |
| eigencam | the activations (hw, K) projected on their first right singular vector (from the smaller Gram matrix), uncentred, class-agnostic (Muhammad & Yeasin, 2020) |
| smoothgradcampp | Grad-CAM++ with the gradient powers averaged over noisy copies of the image (Omeiza et al., 2019) |
| integrated_gradients | |sum_RGB (x - x') * mean_k dy^c/dx(x' + k/m (x - x'))|, input resolution (Sundararajan et al., 2017) |

Options are constructor keywords (`build_localizer(name, target, layer, **options)`). The sampling
localizers run `chunk` images per forward pass (defaults: the largest whose peak memory stays within
2x one forward and backward of a batch of 2, VGG16 CAM at 224 px: `scripts/bench_chunks.py`,
docs/performance.md); progress is left to the caller's loop over batches.
"""
from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.hooks import capture, eval_mode
from acol.cams.localizers import LOCALIZERS, Localizer, _Gradients, class_logits, cpu_channels_last
from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

BLACK = tuple(-m / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))  # a black image, ImageNet-normalised


def _positive(name: str, value, minimum: float = 1):
    if not value >= minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return value


@LOCALIZERS.register("hirescam")
class HiResCAM(_Gradients):
    """HiResCAM (Draelos & Carin, 2020): sum_k dy^c/dA^k * A^k, element-wise. Signed as in the
    paper (pytorch-grad-cam clips it at 0); the min-max normalisation maps its minimum to 0."""

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        return logits, (grad * act).sum(dim=1)


@LOCALIZERS.register("xgradcam")
class XGradCAM(_Gradients):
    """XGrad-CAM (Fu et al., BMVC 2020, eq. 9): w_k = sum_ij A^k_ij / sum_ab A^k_ab * dy^c/dA^k_ij,
    map ReLU(sum_k w_k A^k). A channel whose activations sum to 0 gets w_k = 0 (pytorch-grad-cam
    and torchcam add an epsilon to the sum instead)."""

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        total = act.sum(dim=(2, 3), keepdim=True)
        weights = torch.where(total != 0, (act * grad).sum(dim=(2, 3), keepdim=True) / torch.where(total != 0, total, 1), 0)
        return logits, F.relu((weights * act).sum(dim=1))


@LOCALIZERS.register("layercam")
class LayerCAM(_Gradients):
    """LayerCAM (Jiang et al., TIP 2021): ReLU(sum_k ReLU(dy^c/dA^k_ij) * A^k_ij)."""

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        return logits, F.relu((F.relu(grad) * act).sum(dim=1))


@contextlib.contextmanager
def _one_thread():
    """torch's CPU ops on one thread inside, the caller's thread count restored on exit: LAPACK's
    eigensolvers on several threads of a loaded machine can stall for seconds (one thread: ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


LANCZOS_STEPS = 64  # Krylov steps before `principal_projection` decomposes the Gram matrix instead
DIRECT_GRAM_SIZE = 128  # up to this side the Gram matrix's eigh beats Lanczos's Python loop; from 196 on
                        # Lanczos wins (docs/performance.md)


def top_eigenpair(apply, size: int, steps: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lambda_1, its unit eigenvector (size,)) of a symmetric positive semi-definite float64 operator
    `apply` (vector -> vector), by Lanczos with full reorthogonalisation from a fixed random start: done
    when the Ritz residual is within 1e-12 of the gap to the next Ritz value (the vector's error is about
    that ratio) or the Krylov space is whole; None when `steps` do not get there."""
    q = torch.randn(size, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    basis, alphas, betas = [q / q.norm()], [], []
    for step in range(min(size, steps)):
        w = apply(basis[-1])
        alphas.append(torch.dot(basis[-1], w))
        q = torch.stack(basis, dim=1)  # (size, step + 1), orthonormal
        for _ in range(2):  # twice is enough (Kahan)
            w = w - q @ (q.T @ w)
        beta = w.norm()
        off = torch.stack(betas) if betas else torch.zeros(0, dtype=torch.float64)
        ritz, vectors = torch.linalg.eigh(torch.diag(torch.stack(alphas)) + torch.diag(off, 1) + torch.diag(off, -1))
        residual = beta * vectors[-1, -1].abs()
        whole = beta <= 1e-14 * ritz[-1].abs().clamp_min(torch.finfo(torch.float64).tiny)
        if whole or (step and residual <= 1e-12 * (ritz[-1] - ritz[-2])):
            return ritz[-1], q @ vectors[:, -1]
        betas.append(beta)
        basis.append(w / beta)
    return None


def principal_projection(matrix: torch.Tensor) -> torch.Tensor:
    """(B, n, K) -> (B, n) float64: each matrix M projected on its first right singular vector,
    M v_1 (= s_1 u_1), signed so that it sums to >= 0.

    The top eigenvector of the smaller Gram matrix: M^T M (K x K), whose top eigenvector is v_1, or
    M M^T (n x n), whose top eigenvector u_1 gives s_1 u_1 with s_1 = sqrt(lambda_1); by Lanczos
    (`top_eigenpair`, matrix-vector products with M only), or from the Gram matrix's eigendecomposition
    (float64, one thread) where it is at most `DIRECT_GRAM_SIZE` on a side or Lanczos does not converge.
    Equal to the SVD's projection to float64 rounding over the top eigenvalue's gap; an all-zero M
    gives zeros.
    """
    m = matrix.double()
    n, k = m.shape[-2:]
    projections = []
    for one in m:
        found = None if min(n, k) <= DIRECT_GRAM_SIZE else top_eigenpair(
            (lambda x: one.T @ (one @ x)) if k <= n else (lambda x: one @ (one.T @ x)), min(n, k), LANCZOS_STEPS)
        if found is None:
            with _one_thread():
                values, vectors = torch.linalg.eigh(one.T @ one if k <= n else one @ one.T)
            found = values[-1], vectors[:, -1]  # eigh sorts the eigenvalues in ascending order
        value, top = found
        projections.append(one @ top if k <= n else top * value.clamp_min(0).sqrt())
    projection = torch.stack(projections) if projections else m.new_zeros(m.shape[:2])
    return projection * torch.where(projection.sum(dim=-1, keepdim=True) < 0, -1.0, 1.0)


@LOCALIZERS.register("eigencam")
class EigenCAM(_Gradients):
    """Eigen-CAM (Muhammad & Yeasin, 2020): the (hw, K) activation matrix M of each image projected
    on its first right singular vector v_1, M v_1 (= s_1 u_1; `principal_projection`). Uncentred as
    in the paper (pytorch-grad-cam subtracts the per-channel mean first, then clips at 0). Class-
    agnostic, no backward pass. The singular vector's sign is fixed so that the map sums to >= 0
    (pytorch-grad-cam keeps the sign numpy's SVD happens to give)."""

    def raw(self, model, images, labels):
        with eval_mode(model), torch.no_grad(), capture(self.target_layer(model)) as activation:
            logits = class_logits(model, cpu_channels_last(images), self.forward_labels(labels))
        act = activation.value.detach()  # capture made it a leaf requiring grad: no graph for the projection
        if act.dim() != 4:
            raise ValueError(f"layer output must be (B, K, h, w); got {tuple(act.shape)}")
        b, k, h, w = act.shape
        projection = principal_projection(act.flatten(2).transpose(1, 2))  # (B, hw, K) -> (B, hw)
        return logits, projection.float().view(b, h, w)


class _AtClasses(_Gradients):
    """`_Gradients` of given classes whatever the logits: a perturbed copy keeps its image's class."""

    def __init__(self, localizer: Localizer, classes: torch.Tensor):
        super().__init__(localizer.target, localizer.layer)
        self.fixed = classes

    def classes(self, logits, labels):
        return self.fixed


def _copies(copies: int, batch: int, chunk: int, device: torch.device):
    """(copy, image) index tensors over copies x batch, copy-major, `chunk` pairs at a time."""
    for part in torch.arange(copies * batch, device=device).split(chunk):
        yield part.div(batch, rounding_mode="floor"), part % batch


NOTED_LAYERS: set[str] = set()  # where Smooth Grad-CAM++ said its noise changes nothing: once per process


@LOCALIZERS.register("smoothgradcampp")
class SmoothGradCAMPlusPlus(_Gradients):
    """Smooth Grad-CAM++ (Omeiza et al., 2019): Grad-CAM++ (eq. 19 closed form, as `gradcam_pp`)
    with g, g^2, g^3 each averaged over `samples` noisy copies x + sigma (max x - min x) eps:
    alpha = mean g^2 / (2 mean g^2 + sum_ab A_ab mean g^3), w_k = sum_ij alpha relu(mean g), map
    ReLU(sum_k w_k A^k) with A the clean image's activations. The class is the clean image's.

    The noise eps (samples, 3, H, W) is drawn on the CPU from a generator seeded with `seed` at
    each call, the same draws for every image of the batch, so a map is reproducible and does not
    depend on the batch (on CUDA the sums over copies run in an unspecified order: equal to float
    tolerance, not bitwise). `chunk` noisy images per forward. torchcam (defaults 4 samples, std 0.3
    absolute) averages g^2 and g^3 but takes relu(g) of the last sample only; the defaults here
    follow SmoothGrad's advice (a 10-20 % spread)."""

    def __init__(self, target="gt", layer=None, samples: int = 20, sigma: float = 0.15, chunk: int = 16,
                 seed: int = 0):
        super().__init__(target, layer)
        self.samples, self.sigma = _positive("samples", samples), _positive("sigma", sigma, 0)
        self.chunk, self.seed = _positive("chunk", chunk), seed

    def noise(self, images: torch.Tensor) -> torch.Tensor:
        """(samples, C, H, W) standard normal draws, the same at every call, on the images' device."""
        g = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.samples, *images.shape[1:], generator=g).to(images.device)

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        classes = self.classes(logits, labels)
        b = len(images)
        spread = self.sigma * (images.flatten(1).amax(1) - images.flatten(1).amin(1)).float()
        eps = self.noise(images)
        moments = torch.zeros(3, *grad.shape, device=grad.device)  # sums of g, g^2, g^3
        constant = self.sigma > 0  # so far every noisy copy has its clean image's gradient
        for sample, image in _copies(self.samples, b, self.chunk, images.device):
            noisy = cpu_channels_last(images[image] + spread[image].view(-1, 1, 1, 1) * eps[sample])
            _, _, g = _AtClasses(self, classes[image]).gradients(model, noisy, labels[image])
            moments.index_add_(1, image, torch.stack([g, g.pow(2), g.pow(3)]))
            constant = constant and torch.allclose(g, grad[image], rtol=1e-4, atol=1e-7)
        layer = self.layer or getattr(model, "default_cam_layer", "its layer")
        if constant and layer not in NOTED_LAYERS:
            NOTED_LAYERS.add(layer)
            print(f"note: smoothgradcampp at {layer}: the gradient there is the same for every input (the layer "
                  f"is followed only by global pooling and a linear classifier), so the map equals gradcam_pp's at "
                  f"{self.samples + 1}x its cost; use gradcam_pp there, or a layer inside the network",
                  file=sys.stderr, flush=True)
        g1, g2, g3 = moments / self.samples
        denominator = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * g3
        alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * F.relu(g1)).sum(dim=(2, 3), keepdim=True)
        return logits, F.relu((weights * act).sum(dim=1))


@LOCALIZERS.register("integrated_gradients")
class IntegratedGradients(Localizer):
    """Integrated Gradients (Sundararajan et al., 2017), right Riemann sum of `steps` points:
    (x - x') * mean_{k=1..m} dy^c/dx at x' + (k/m)(x - x'). The baseline x' is a black image in the
    normalised space (`baseline`: one value per input channel, default ImageNet's black). The map,
    at input resolution, is |sum over RGB| of the attribution (the pixel's signed share of
    y(x) - y(x'), whose absolute value ranks pixels by influence). `chunk` images per forward;
    `layer` is not used."""

    def __init__(self, target="gt", layer=None, steps: int = 32, chunk: int = 4, baseline: tuple[float, ...] = BLACK):
        super().__init__(target, layer)
        self.steps, self.chunk, self.baseline = _positive("steps", steps), _positive("chunk", chunk), tuple(baseline)

    def attributions(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """(logits (B, C), signed attributions (B, 3, H, W) float32)."""
        self.require_autograd()
        if len(self.baseline) != images.shape[1]:
            raise ValueError(f"baseline has {len(self.baseline)} values for {images.shape[1]} input channels")
        b = len(images)
        start = torch.tensor(self.baseline, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
        path = images.detach() - start
        total = torch.zeros(images.shape, device=images.device)
        with eval_mode(model), torch.enable_grad():
            with torch.no_grad():
                logits = class_logits(model, images, self.forward_labels(labels))
            classes = self.classes(logits, labels)
            for step, image in _copies(self.steps, b, self.chunk, images.device):
                fraction = ((step + 1).to(images.dtype) / self.steps).view(-1, 1, 1, 1)
                x = cpu_channels_last(start + fraction * path[image]).requires_grad_(True)
                scores = class_logits(model, x, self.forward_labels(labels[image])).float()
                (g,) = torch.autograd.grad(scores.gather(1, classes[image][:, None]).sum(), x)
                total.index_add_(0, image, g.float())
        return logits.detach(), path.float() * total / self.steps

    def raw(self, model, images, labels):
        logits, attributions = self.attributions(model, images, labels)
        return logits, attributions.sum(dim=1).abs()
