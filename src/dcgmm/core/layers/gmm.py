"""GMM layer: a diagonal Gaussian mixture at every position of its input (docs/design.md section 1.2).

Notation: ``N`` images, ``D`` input channels (the dimension of one Gaussian), ``H x W``
positions, ``P = H*W``, ``K`` components. Parameters live in "position groups" ``G``:
``G = 1`` in shared ("conv") mode, one parameter set for all positions; ``G = P`` in
independent mode, one set per position.

Parameters (docs/design.md's names in brackets):
    mixture_logits [xi]  (G, K)     pi = softmax(xi)
    means          [mu]  (G, K, D)
    inv_std        [s]   (G, K, D)  s = 1/std = sqrt(diagonal precision), kept in
                                    [inv_std_min, sqrt(precision_max)] by :meth:`constrain_`.

Log-score of component k at one position x (units: nats)::

    l_k(x) = log pi_k + sum_d log s_kd - 1/2 sum_d s_kd^2 (x_d - mu_kd)^2 - D/2 log(2 pi)

computed with the square expanded, so the batch work is two matrix products::

    l = (x*x) @ (-s^2/2)^T + x @ (mu*s^2)^T + (log pi + sum log s - 1/2 sum (mu*s)^2 - D/2 log 2pi)

Above a folding, in shared mode, the same two products are two convolutions of the folding's
input (:meth:`GMMLayer.log_scores_of_patches`, docs/design.md section 6): no patch copy.

On the positive floor of ``s``: the authors' code clips ``s`` only from above, so ``log s`` can be
undefined. Here ``s`` is clipped to ``[inv_std_min, sqrt(precision_max)]`` (default floor 1e-3,
i.e. std at most 1000), which keeps ``log s`` finite. ``1/precision_max`` is the variance floor.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from dcgmm.core.layers.base import TOP_DRAWS, Layer, Shape, TopDownContext, require_positive_int
from dcgmm.core.layers.smoothing import is_identity_width, smoothing_kernel
from dcgmm.errors import ConfigError

LOG_2PI = math.log(2.0 * math.pi)
MODES = ("shared", "independent")
LOSSES = ("max_component", "logsumexp")
SEPARATE_FROM = 4  # input channels from which a convolving layer runs its two products as two convolutions (log_scores_of_patches)


class SmoothedMax(torch.autograd.Function):
    """``mean_p max_k sum_j g_kj l_pj``: scores ``(N, P, K)`` and kernel ``g (K, K)`` (``None``: the
    identity, no product) -> ``(N,)``, the max-component objective of each image.

    The gradient with respect to ``l`` at a position is the winning component's row of ``g`` times
    the image's gradient over ``P``. The backward forms these in one weighted gather
    (``embedding_bag`` with per-position weights) over ``(N, P, K)``: no scatter into zeros and
    product with ``g`` (autograd's way), no second pass to scale the rows.
    """

    @staticmethod
    def forward(ctx, scores: torch.Tensor, kernel: torch.Tensor | None) -> torch.Tensor:
        smoothed = scores if kernel is None else scores @ kernel.t()
        values, winner = smoothed.max(dim=-1)  # (N, P): the smoothed max and its component
        ctx.save_for_backward(winner, kernel)
        ctx.components = scores.shape[-1]
        return values.mean(dim=1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        winner, kernel = ctx.saved_tensors
        (n, positions), k = winner.shape, ctx.components
        if kernel is None:
            kernel = torch.eye(k, dtype=grad.dtype, device=grad.device)
        scale = (grad / positions).unsqueeze(1).expand(n, positions).reshape(-1)  # (N*P,): each image's gradient / P
        bags = torch.arange(n * positions, device=winner.device)  # one row per bag: a weighted gather
        rows = F.embedding_bag(winner.view(-1), kernel, bags, mode="sum", per_sample_weights=scale)  # (N*P, K): scale * g[winner]
        return rows.view(n, positions, k), None


class ScoreWeights(torch.autograd.Function):
    """The weights of the log-scores from the parameters, with an analytic backward:
    ``(xi, mu, s) -> (-s^2/2, mu*s^2, log softmax(xi) + sum_d log s - 1/2 sum_d (mu*s)^2 - D/2 log 2pi)``,
    shapes ``(G, K), (G, K, D), (G, K, D) -> (G, K, D), (G, K, D), (G, K)``.

    Autograd records a dozen operators for these and runs about 25 elementwise passes over the
    ``(G, K, D)`` parameters in their backward (a third of topology B's time outside its matrix
    products). With ``h = g_lin - g_bias * mu`` the gradients are

        d mu = s^2 h,   d s = s (mu (g_lin + h) - g_quad) + g_bias / s,   d xi = g_bias - pi sum_k g_bias

    seven passes. The forward computes what the layer computed before, operator for operator.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, means: torch.Tensor, inv_std: torch.Tensor):
        s2 = inv_std * inv_std
        log_pi = torch.log_softmax(logits, dim=-1)
        bias = log_pi + torch.log(inv_std).sum(-1) - 0.5 * (means * inv_std).pow(2).sum(-1) - 0.5 * means.shape[-1] * LOG_2PI
        ctx.save_for_backward(log_pi, means, inv_std, s2)
        return -0.5 * s2, means * s2, bias

    @staticmethod
    def backward(ctx, g_quad: torch.Tensor | None, g_lin: torch.Tensor | None, g_bias: torch.Tensor | None):
        log_pi, means, inv_std, s2 = ctx.saved_tensors
        g_quad = torch.zeros_like(means) if g_quad is None else g_quad
        g_lin = torch.zeros_like(means) if g_lin is None else g_lin
        g_bias = torch.zeros_like(log_pi) if g_bias is None else g_bias
        per_component = g_bias.unsqueeze(-1)  # (G, K, 1)
        h = torch.addcmul(g_lin, per_component, means, value=-1.0)  # g_lin - g_bias * mu
        d_means = s2 * h
        d_inv_std = h.add_(g_lin).mul_(means).sub_(g_quad).mul_(inv_std)  # s (mu (g_lin + h) - g_quad), in h's memory
        d_inv_std.addcdiv_(per_component.expand_as(inv_std), inv_std)  # + g_bias / s
        d_logits = g_bias - log_pi.exp() * g_bias.sum(-1, keepdim=True)
        return d_logits, d_means, d_inv_std


class GMMLayer(Layer):
    """Mixture of ``K`` diagonal Gaussians over the ``D = C_in`` channels at each position.

    Bottom-up: ``(N, D, H, W) -> (N, K, H, W)`` responsibilities ``softmax_k l_k(x)``.
    Top-down: a non-negative prior ``(N, K, H, W)`` over components -> a sample ``(N, D, H, W)``.

    Args:
        in_shape: ``(D, H, W)``.
        K: number of components (a perfect square when the layer is annealed).
        mode: ``"shared"`` (default) or ``"independent"`` (parameters per position).
        loss: ``"max_component"`` (the annealed bound, default) or ``"logsumexp"`` (exact).
        mu_init: means start uniform in ``[-mu_init, mu_init]``.
        precision_max: largest allowed precision ``s^2``; ``1/precision_max`` is the variance floor.
        inv_std_min: positive floor of ``s`` (see module docstring).
        D: the input dimension, if the spec states it: checked against the channels below.

    How it learns (learning rate, lambdas, wait, annealing) is the training module's
    (:mod:`dcgmm.training.policy`, :class:`dcgmm.training.annealing.Annealing`); a new layer smooths nothing
    (sigma ``None``: the kernel is the identity) until the annealing component sets its sigma.
    """

    kind = "gmm"
    learns = True
    is_density = True
    model_defaults = ("K", "mode", "loss", "precision_max")

    def __init__(
        self,
        in_shape: Shape,
        K: int = 25,
        mode: str = "shared",
        loss: str = "max_component",
        mu_init: float = 0.1,
        precision_max: float = 20.0,
        inv_std_min: float = 1e-3,
        D: int | None = None,
        index: int = 0,
    ) -> None:
        super().__init__(in_shape, index)
        where = f"layer {index} (gmm)"
        if D is not None and int(D) != self.in_shape[0]:
            raise ConfigError(
                f"{where}: D={D} does not match the {self.in_shape[0]} channels that layer {index - 1} "
                f"produces; drop D or make it {self.in_shape[0]}"
            )
        self.K = require_positive_int(K, "K", where)
        if mode not in MODES:
            raise ConfigError(f"{where}: mode={mode!r} is unknown; use one of {list(MODES)}")
        if loss not in LOSSES:
            raise ConfigError(f"{where}: loss={loss!r} is unknown; use one of {list(LOSSES)}")
        if not precision_max > 0:
            raise ConfigError(
                f"{where}: precision_max={precision_max} gives a variance floor 1/precision_max <= 0; "
                f"use a positive value such as precision_max=20"
            )
        if not 0 < inv_std_min < math.sqrt(precision_max):
            raise ConfigError(f"{where}: inv_std_min={inv_std_min} must lie in (0, sqrt(precision_max))")

        dim, height, width = self.in_shape
        self.D, self.P = dim, height * width
        self.mode, self.loss_kind = mode, loss
        self.out_shape = (self.K, height, width)
        groups = self.P if mode == "independent" else 1
        self.inv_std_max = math.sqrt(float(precision_max))
        self.inv_std_min = float(inv_std_min)
        self.mu_init = float(mu_init)

        self.mixture_logits = nn.Parameter(torch.zeros(groups, self.K))  # (G, K)
        self.means = nn.Parameter(torch.empty(groups, self.K, dim))  # (G, K, D)
        self.inv_std = nn.Parameter(torch.empty(groups, self.K, dim))  # (G, K, D)
        self.reset_parameters()

        self.sigma: float | None = None  # width of the smoothing kernel; None: the identity
        self._smoothing_is_identity = True
        self.register_buffer("smoothing", torch.eye(self.K), persistent=False)  # (K, K)

    # ----------------------------------------------------------------------------- parameters
    def reset_parameters(self) -> None:
        """Initialisation (docs/design.md section 1.2): uniform pi, mu ~ U(-mu_init, mu_init), s = sqrt(precision_max)."""
        with torch.no_grad():
            self.mixture_logits.zero_()
            self.means.uniform_(-self.mu_init, self.mu_init)
            self.inv_std.fill_(self.inv_std_max)

    def constrain_(self) -> None:
        """Clip ``s`` into ``[inv_std_min, sqrt(precision_max)]`` (call after every update)."""
        with torch.no_grad():
            self.inv_std.clamp_(self.inv_std_min, self.inv_std_max)

    @property
    def annealable(self) -> bool:
        """True for the max-component objective, which is smoothed over the component grid."""
        return self.loss_kind == "max_component"

    def set_sigma(self, sigma: float | None) -> None:
        """Set the width of the smoothing kernel (``None`` or a width below ~0.026: the identity);
        the kernel is rebuilt only when ``sigma`` changes. A width that smooths needs K to be a
        perfect square (one-line error otherwise)."""
        sigma = None if sigma is None else float(sigma)
        if sigma == self.sigma:
            return
        kernel = smoothing_kernel(self.K, sigma) if self.annealable and not is_identity_width(sigma) else torch.eye(self.K)
        self.sigma = sigma
        with torch.no_grad():  # in place: keeps the buffer's dtype (64-true training), device and address
            self.smoothing.copy_(kernel)
        self._smoothing_is_identity = bool(torch.equal(kernel, torch.eye(self.K)))

    def get_extra_state(self) -> dict:
        return {"sigma": self.sigma}

    def set_extra_state(self, state: dict) -> None:
        self.sigma = float("nan")  # force a rebuild of the kernel
        self.set_sigma(state["sigma"])

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights pi: ``(G, K)``, rows sum to one."""
        return torch.softmax(self.mixture_logits, dim=-1)

    @property
    def variances(self) -> torch.Tensor:
        """Diagonal variances ``1/s^2``: ``(G, K, D)``."""
        return self.inv_std.detach().pow(-2)

    def parameter_groups(self) -> list[tuple[str, list[nn.Parameter], float]]:
        """``(name, params, lr factor)`` for SGD: ``mu``, ``sigma`` (of ``s``) and ``pi`` (of ``xi``),
        with factor ``P`` in independent mode so per-position parameters learn as fast as shared
        ones (docs/design.md section 2; the policy multiplies in the lambdas)."""
        scale = float(self.P) if self.mode == "independent" else 1.0
        return [("mu", [self.means], scale), ("sigma", [self.inv_std], scale), ("pi", [self.mixture_logits], scale)]

    # ----------------------------------------------------------------------------- bottom-up
    def log_scores(self, x: torch.Tensor) -> torch.Tensor:
        """Per-component log-scores ``l_k(x)`` in nats: ``(N, D, H, W) -> (N, P, K)``.

        Two matrix products, ``(x*x) @ (-s^2/2)^T + x @ (mu*s^2)^T``, plus a per-component bias.
        """
        with torch.autocast(x.device.type, enabled=False):  # never in reduced precision (see objective)
            return self._log_scores(x.to(self.means.dtype))

    def _log_scores(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        x = x.reshape(n, self.D, self.P).transpose(1, 2)  # (N, P, D); a view for channels-last input
        quad_weight, lin_weight, bias = self.score_weights()  # (G, K, D), (G, K, D), (G, K)
        if self.mode == "shared":  # views of the one group (a view's backward is a view; an index's is a copy)
            flat = x.reshape(n * self.P, self.D)  # (N*P, D)
            scores = torch.addmm(bias.view(self.K), flat * flat, quad_weight.view(self.K, self.D).t())  # (N*P, K)
            scores = torch.addmm(scores, flat, lin_weight.view(self.K, self.D).t())
            return scores.view(n, self.P, self.K)
        per_position = x.transpose(0, 1)  # (P, N, D)
        scores = torch.baddbmm(bias.unsqueeze(1), per_position * per_position, quad_weight.transpose(1, 2))  # (P, N, K)
        scores = torch.baddbmm(scores, per_position, lin_weight.transpose(1, 2))
        return scores.transpose(0, 1)  # (N, P, K)

    def bottom_up(self, x: torch.Tensor, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-scores ``(N, P, K)`` (raw output) and responsibilities ``(N, K, H, W)`` of ``x (N, D, H, W)``."""
        scores = self.log_scores(x.detach() if detach else x)  # (N, P, K)
        return scores, self.responsibilities(scores.detach() if detach else scores)

    def absorbs(self, below: Layer) -> bool:
        """A folding right below, in shared mode: its patches' scores are convolutions (:meth:`convolves`)."""
        return below.kind == "folding" and below.index == self.input_layer and self.convolves(below)

    def bottom_up_through(self, x: torch.Tensor, below: Layer, detach: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`bottom_up` of ``below(x)`` from the folding's input ``x (N, C, H, W)``, no patch copy."""
        scores = self.log_scores_of_patches(x.detach() if detach else x, below)  # (N, P, K)
        return scores, self.responsibilities(scores.detach() if detach else scores)

    def convolves(self, fold) -> bool:
        """True when the log-scores of ``fold``'s patches are computed as convolutions of ``fold``'s
        input (:meth:`log_scores_of_patches`): shared mode and more than one patch position."""
        return self.mode == "shared" and self.P > 1 and tuple(fold.out_shape) == tuple(self.in_shape)

    def log_scores_of_patches(self, x: torch.Tensor, fold) -> torch.Tensor:
        """``log_scores(fold(x))`` without cutting the patches: ``(N, C, H, W) -> (N, P, K)``.

        In shared mode the two products over patches are convolutions of the folding's input and
        its square with the parameters as kernels: ``conv(x*x, -s^2/2) + conv(x, mu*s^2) + bias``,
        the sums of the patch products (patch channels in ``(i, j, c)`` order) without the patch
        copy. Below ``SEPARATE_FROM`` input channels (the images) the two run as one convolution
        of ``[x*x, x]`` stacked as ``2C`` channels (one backward, no sum of two score maps); above,
        as two, since stacking a wide map costs a copy that interleaves its channels (topology
        E's layer 3: about 5 ms of ``cat`` a step on a 2-core Intel Xeon, more than the second
        convolution).
        Input and kernels are channels-last, so the output is too and the scores ``(N, P, K)``
        are a view of it (``python -m benchmarks.run products`` times the formulations,
        docs/performance.md).
        """
        with torch.autocast(x.device.type, enabled=False):
            x = x.to(self.means.dtype)
            (kh, kw), channels = fold.kernel_size, x.shape[1]
            quad_weight, lin_weight, bias = self.score_weights()  # (1, K, D), (1, K, D), (1, K): the one group

            def kernel(weight: torch.Tensor) -> torch.Tensor:  # (1, K, D), D in (i, j, c) order -> (K, C, kh, kw), channels last
                return weight.view(self.K, kh, kw, channels).permute(0, 3, 1, 2)

            if channels < SEPARATE_FROM:
                stacked = torch.cat((x * x, x), dim=1).contiguous(memory_format=torch.channels_last)  # (N, 2C, H, W)
                scores = F.conv2d(stacked, torch.cat((kernel(quad_weight), kernel(lin_weight)), dim=1), bias.view(self.K), stride=fold.stride)
            else:
                x = x.contiguous(memory_format=torch.channels_last)
                scores = F.conv2d(x * x, kernel(quad_weight), bias.view(self.K), stride=fold.stride)
                scores = scores.add_(F.conv2d(x, kernel(lin_weight), stride=fold.stride))  # in place: conv's backward keeps no output
            # (N, K, H', W'), channels-last memory
            return scores.permute(0, 2, 3, 1).reshape(x.shape[0], self.P, self.K)  # a view

    def score_weights(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weights of the log-scores' two products and their per-component constant:
        ``-s^2/2 (G, K, D)``, ``mu*s^2 (G, K, D)`` and the bias ``(G, K)`` (:class:`ScoreWeights`)."""
        return ScoreWeights.apply(self.mixture_logits, self.means, self.inv_std)

    def responsibilities(self, scores: torch.Tensor) -> torch.Tensor:
        """Posteriors as a map: ``(N, P, K) -> (N, K, H, W)`` (a channels-last view, no copy)."""
        n = scores.shape[0]
        gamma = torch.softmax(scores, dim=-1)  # (N, P, K)
        return gamma.transpose(1, 2).reshape(n, *self.out_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Responsibilities ``(N, K, H, W)`` of the input ``(N, D, H, W)``."""
        return self.responsibilities(self.log_scores(x))

    def objective(self, scores: torch.Tensor) -> torch.Tensor:
        """The objective the layer maximises, per image: ``(N, P, K) -> (N,)`` (mean over positions).

        ``max_component``: ``max_k sum_j g_kj l_j`` (the annealed bound); ``logsumexp``: exact.

        Log-scores and objectives are computed in the parameters' precision (float32, or float64
        under ``trainer.precision=64-true``) even inside a mixed-precision autocast region: bf16
        moves the log-score of a 784-dimensional Gaussian by about 0.6 nats and flips argmax
        assignments.
        """
        with torch.autocast(scores.device.type, enabled=False):
            return self._objective(scores.to(self.means.dtype))

    def _objective(self, scores: torch.Tensor) -> torch.Tensor:
        if self.loss_kind == "logsumexp":
            return torch.logsumexp(scores, dim=-1).mean(dim=1)
        return SmoothedMax.apply(scores, None if self._smoothing_is_identity else self.smoothing)  # (N,)

    def loss(self, scores: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Scalar to minimise: minus the objective, averaged over the batch (labels unused)."""
        return -self.objective(scores).mean()

    @staticmethod
    def log_likelihood(scores: torch.Tensor) -> torch.Tensor:
        """Exact log-likelihood per image summed over positions, in nats: ``(N, P, K) -> (N,)``."""
        return torch.logsumexp(scores, dim=-1).sum(dim=1)

    @staticmethod
    def max_component_bound(scores: torch.Tensor) -> torch.Tensor:
        """Unsmoothed bound ``max_k l_k`` per image summed over positions: ``(N, P, K) -> (N,)``."""
        return scores.amax(dim=-1).sum(dim=1)

    # ----------------------------------------------------------------------------- top-down
    def top_down(self, signal: torch.Tensor | None, context: TopDownContext | None = None) -> torch.Tensor:
        """Draw one sample per position from a top-down prior over components.

        Args:
            signal: non-negative prior ``(N, K, H, W)`` from a layer above; ``None`` means this is
                the top of the pass: draw ``context.n`` samples from pi at every position.
            context: ``top_s`` keeps the ``top_s`` largest entries of a prior from above and draws
                among them in proportion. It does not apply where the pass starts (``signal=None``):
                top-S of pi would always pick its heaviest components, so the top layer draws from
                its whole prior, which ``context.top`` names: pi (``"weights"``), uniform over K
                (``"uniform"``) or component ``i mod K`` for sample ``i`` (``"cycle"``)
                (docs/design.md, "Sampling"). The std is divided by ``divisor``
                (>1 gives cleaner samples); dims whose std sits at the variance floor are drawn
                with std 0.
        Returns:
            ``(N, D, H, W)`` in this layer's input space.
        """
        context = context or TopDownContext()
        self.check_top_down(context)
        n, top_s, divisor, generator = context.n, context.top_s, context.divisor, context.generator
        if signal is None:
            if n is None or n < 1:
                raise ConfigError(f"{self.name}: give a prior or a positive number of samples n")
            if context.top == "uniform":  # the authors' unconditional top layer: every component alike
                prior = self.weights.new_ones(n, self.P, self.K)
            elif context.top == "cycle":  # sample i takes component i mod K at every position
                component = torch.arange(n, device=self.means.device) % self.K
                prior = F.one_hot(component, self.K).to(self.means.dtype).view(n, 1, self.K).expand(n, self.P, self.K)
            else:
                prior = self.weights.detach().unsqueeze(0).expand(n, -1, -1)  # (N, G, K)
                prior = prior.expand(n, self.P, self.K) if prior.shape[1] == 1 else prior  # (N, P, K)
            top_s = self.K  # the whole prior: top-S is for priors that come from a layer above
        else:
            n = signal.shape[0]
            prior = signal.detach().reshape(n, self.K, self.P).transpose(1, 2)  # (N, P, K)
        values, idx = prior.topk(int(top_s), dim=-1)  # (N, P, S)
        values = values.clamp_min(0).reshape(-1, int(top_s))
        # positions whose prior has no positive entry (e.g. those a sparse pooling left empty)
        # draw nothing: their output is 0, as in the reference
        active = (values.sum(-1, keepdim=True) > 0).view(n, self.P, 1)  # (N, P, 1)
        values = torch.where(values.sum(-1, keepdim=True) > 0, values, torch.ones_like(values))
        pick = torch.multinomial(values, 1, generator=generator).view(n, self.P, 1)  # index into top-S
        component = idx.gather(-1, pick).squeeze(-1)  # (N, P)

        means, inv_std = self.means.detach(), self.inv_std.detach()
        if self.mode == "shared":
            mu, s = means[0][component], inv_std[0][component]  # (N, P, D)
        else:
            pos = torch.arange(self.P, device=component.device).expand_as(component)
            mu, s = means[pos, component], inv_std[pos, component]  # (N, P, D)
        std = torch.where(s >= self.inv_std_max, torch.zeros_like(s), 1.0 / s) / float(divisor)
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        x = (mu + std * noise) * active  # (N, P, D)
        return x.transpose(1, 2).reshape(n, *self.in_shape)

    def check_top_down(self, context: TopDownContext) -> None:
        if not 1 <= int(context.top_s) <= self.K:
            raise ConfigError(f"top_s={context.top_s} must lie in [1, K={self.K}] of {self.name}")
        if not context.divisor > 0:
            raise ConfigError(f"divisor={context.divisor} must be > 0 (published values: 5 to 20)")
        if context.top not in TOP_DRAWS:
            raise ConfigError(f"top={context.top!r} is unknown; use one of {', '.join(TOP_DRAWS)}")

    def macs_per_image(self) -> int:
        return 2 * self.P * self.K * self.D  # two products of (P, D) x (D, K), docs/design.md section 6

    def extra_repr(self) -> str:
        return f"K={self.K}, mode={self.mode}, loss={self.loss_kind}, " + super().extra_repr()
