"""The QueCC paper's inference scaling law: error(N, V) = a * N^-b * V^-c + d, and the token count it favours.

N is the LLM size in billions of parameters, V the visual tokens per image and error = 1 - average benchmark
score. The original grid-searches a shuffled 5M-point grid with an unseeded shuffle and stops at 20%, so its
result changes from run to run; here the same model is fit by bounded least squares (scipy), from a fixed set
of starting points, which is deterministic and reaches a lower error than the grid.
"""

from __future__ import annotations

import argparse
import csv
import itertools
from dataclasses import dataclass

import numpy as np

# scaling_law_code/values.py of locuslab/llava-token-compression: average scores of Qwen-1.5 0.5B/1.8B/4B/7B
# LLaVA models at 1..576 visual tokens.
PAPER_PARAMS_B = (0.5, 1.8, 4.0, 7.0)
PAPER_VISUAL_TOKENS = (1, 4, 16, 36, 64, 144, 576)
PAPER_SCORES = (
    (0.3855, 0.3917, 0.4078, 0.4133, 0.4151, 0.4244, 0.4320),
    (0.4333, 0.4519, 0.4528, 0.4597, 0.4609, 0.4758, 0.4808),
    (0.4630, 0.4692, 0.4858, 0.4916, 0.5023, 0.5092, 0.5185),
    (0.4810, 0.4971, 0.5050, 0.5141, 0.5172, 0.5238, 0.5354),
)
# The original grid's box, (a, b, c, d). Unbounded, the fit degenerates (a -> inf, d -> -inf, b, c -> 0).
DEFAULT_BOUNDS = ((0.2, 0.0, 0.0, 0.0), (0.7, 0.2, 0.05, 0.3))
# The original plots compute as 2 * N * (text + visual tokens) with 50 text tokens.
DEFAULT_TEXT_TOKENS = 50


@dataclass(frozen=True)
class ScalingLawFit:
    """Fitted a, b (LLM-size exponent, the paper's alpha), c (visual-token exponent, beta), d, and the SSE."""

    a: float
    b: float
    c: float
    d: float
    sse: float

    def predict(self, params_b, visual_tokens) -> np.ndarray:
        return predict((self.a, self.b, self.c, self.d), params_b, visual_tokens)

    def optimal_visual_tokens(self, text_tokens: float = DEFAULT_TEXT_TOKENS) -> float:
        """Error-minimising V at any fixed inference budget C ~ N (text + V) (closed form, independent of C).

        With N = C / (Q + V), error - d ~ (Q + V)^b V^-c, minimised at V* = Q c / (b - c) when b > c; below one
        token (Q = 0: text cached) the answer is the smallest count, 1. If c >= b, tokens are worth more than
        parameters and no finite V is optimal: returns inf.
        """
        if self.c >= self.b:
            return float("inf")
        return max(1.0, text_tokens * self.c / (self.b - self.c))

    def best_allocation(
        self, flops: float, text_tokens: float = DEFAULT_TEXT_TOKENS, visual_tokens=PAPER_VISUAL_TOKENS
    ):
        """(visual tokens, LLM size in B, predicted error) minimising error at `flops` = 2 N (Q + V) per sample."""
        options = []
        for tokens in visual_tokens:
            params_b = flops / (2 * (text_tokens + tokens)) / 1e9
            options.append((tokens, params_b, float(self.predict(params_b, tokens))))
        return min(options, key=lambda option: option[2])


def predict(params, params_b, visual_tokens) -> np.ndarray:
    a, b, c, d = params
    return a * np.power(params_b, -b) * np.power(visual_tokens, -c) + d


def paper_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N in billions, V, error) of the paper's 28 points, flattened."""
    params_b, tokens = np.meshgrid(PAPER_PARAMS_B, PAPER_VISUAL_TOKENS, indexing="ij")
    errors = 1.0 - np.asarray(PAPER_SCORES)
    return params_b.ravel(), tokens.ravel().astype(float), errors.ravel()


def fit_scaling_law(params_b, visual_tokens, errors, bounds=DEFAULT_BOUNDS) -> ScalingLawFit:
    """Bounded least squares of the unweighted squared error, best of a fixed 2^4 grid of starting points."""
    from scipy.optimize import least_squares

    params_b, visual_tokens, errors = (np.asarray(x, dtype=float) for x in (params_b, visual_tokens, errors))
    if not (params_b.shape == visual_tokens.shape == errors.shape) or params_b.ndim != 1:
        raise ValueError(
            f"params_b, visual_tokens and errors must be 1-D of one length, got shapes {params_b.shape}, "
            f"{visual_tokens.shape}, {errors.shape}."
        )
    if (params_b <= 0).any() or (visual_tokens <= 0).any():
        raise ValueError("LLM sizes and visual token counts must be positive.")
    low, high = np.asarray(bounds[0], dtype=float), np.asarray(bounds[1], dtype=float)

    def residuals(params):
        return predict(params, params_b, visual_tokens) - errors

    best = None
    for fractions in itertools.product((0.25, 0.75), repeat=4):
        start = low + np.asarray(fractions) * (high - low)
        result = least_squares(residuals, start, bounds=(low, high), method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12)
        if best is None or result.cost < best.cost:
            best = result
    a, b, c, d = (float(x) for x in best.x)
    return ScalingLawFit(a=a, b=b, c=c, d=d, sse=float(2 * best.cost))


def plot_fit(fit: ScalingLawFit, path, data=None, text_tokens: float = DEFAULT_TEXT_TOKENS) -> None:
    """Error against inference FLOPs (2 N (Q + V)), one fitted curve and the data points per visual-token count."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params_b, tokens, errors = paper_data() if data is None else (np.asarray(x, dtype=float) for x in data)
    sizes = np.geomspace(params_b.min() / 2, params_b.max() * 3, 100)
    figure, axis = plt.subplots(figsize=(7, 5))
    for index, count in enumerate(sorted(set(tokens.tolist()))):
        colour = plt.cm.viridis(index / max(1, len(set(tokens.tolist())) - 1))
        flops = 2 * sizes * 1e9 * (text_tokens + count)
        axis.plot(flops, fit.predict(sizes, count), color=colour, label=f"{count:g} visual tokens")
        chosen = tokens == count
        axis.scatter(2 * params_b[chosen] * 1e9 * (text_tokens + count), errors[chosen], color=colour)
    axis.set_xscale("log")
    axis.set_xlabel(f"inference FLOPs per sample, 2N(Q+V), Q={text_tokens:g} text tokens")
    axis.set_ylabel("error (1 - average score)")
    axis.set_title(
        f"err = {fit.a:.3f} N^-{fit.b:.3f} V^-{fit.c:.3f} + {fit.d:.3f};  "
        f"V* = {fit.optimal_visual_tokens(text_tokens):.1f}"
    )
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def read_csv(path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows with columns `params_b`, `visual_tokens` and either `error` or `score` (error = 1 - score)."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or not {"params_b", "visual_tokens"} <= set(rows[0]) or not {"error", "score"} & set(rows[0]):
        raise ValueError(f"{path}: expected a header with params_b, visual_tokens and error or score.")
    errors = [float(row["error"]) if "error" in row else 1.0 - float(row["score"]) for row in rows]
    return (
        np.array([float(row["params_b"]) for row in rows]),
        np.array([float(row["visual_tokens"]) for row in rows]),
        np.array(errors),
    )


def scaling_law_cli(argv: list[str] | None = None) -> int:
    """`vtc scaling-law [--data CSV] [--text-tokens Q] [--plot PNG]`: fit, print, optionally plot."""
    parser = argparse.ArgumentParser(prog="vtc scaling-law", description=__doc__)
    parser.add_argument("--data", help="CSV with params_b, visual_tokens, error|score; default: the paper's data")
    parser.add_argument("--text-tokens", type=float, default=DEFAULT_TEXT_TOKENS, help="text tokens per query (Q)")
    parser.add_argument("--plot", help="write the fit as an image to this path")
    args = parser.parse_args(argv)

    data = read_csv(args.data) if args.data else paper_data()
    fit = fit_scaling_law(*data)
    print(f"error = {fit.a:.6f} * N^-{fit.b:.6f} * V^-{fit.c:.6f} + {fit.d:.6f}   (SSE {fit.sse:.4e})")
    print(f"b/c = {fit.b / fit.c:.3f}" if fit.c > 0 else "c = 0: visual tokens do not matter in this fit")
    print(
        f"compute-optimal visual tokens at Q={args.text_tokens:g}: {fit.optimal_visual_tokens(args.text_tokens):.2f}"
    )
    if args.plot:
        plot_fit(fit, args.plot, data=data, text_tokens=args.text_tokens)
        print(f"plot written to {args.plot}")
    return 0
