"""Ranking 1,000 captions against 100,000 image embeddings (D = 512), modular vs plain scoring.

Both go through the package's retrieval helper (`search_images`: similarities, then the top 10 per caption), plain
scoring as one matrix product, modular as two per block of `--chunk` captions. Goal: time of modular
scoring at most 2x plain's (peak memory is shown against the same bound).

    python -m bench.retrieval [--texts 1000] [--images 100000] [--dim 512] [--chunk 1024] [--quick]
"""

import torch
import torch.nn.functional as F

from modeling_smartclip.retrieval import EncodedTexts, ImageGallery, search_images
from smartclip_train.train import resolve_device

from .cli import main_for, parser
from .measure import peak_memory, time_runs
from .report import Goal, memory_figure, row, section

GOAL = Goal(2.0, at_most=True)
TOP_K = 10


def random_embeddings(n_text: int, n_image: int, dim: int, device: torch.device, density: float = 0.5, seed: int = 0):
    """Unit-norm captions with 0/1 masks (each dimension on with probability `density`) and a gallery."""
    generator = torch.Generator().manual_seed(seed)
    text_embeds = F.normalize(torch.randn(n_text, dim, generator=generator), dim=-1)
    text_masks = (torch.rand(n_text, dim, generator=generator) < density).float()
    image_embeds = torch.randn(n_image, dim, generator=generator)
    texts = EncodedTexts(text_embeds.to(device), text_masks.to(device))
    return texts, ImageGallery.from_embeddings(image_embeds.to(device))


def run(args) -> dict:
    device = resolve_device(args.device)
    n_text, n_image, dim = (50, 2000, 32) if args.quick else (args.texts, args.images, args.dim)
    chunk = min(args.chunk, 16) if args.quick else args.chunk
    repeats = args.repeats or (1 if args.quick else 3)
    texts, gallery = random_embeddings(n_text, n_image, dim, device)
    print(f"[retrieval] {n_text} captions x {n_image} images, D={dim}, chunk {chunk}, top {TOP_K}, {repeats} repeats")

    runs = {
        "modular": lambda: search_images(texts, gallery, TOP_K, "modular", chunk),
        "plain": lambda: search_images(texts, gallery, TOP_K, "plain", chunk),
    }
    with torch.no_grad():
        seconds = time_runs(runs, repeats, args.warmup, device)
        memory = {name: peak_memory(fn, device) for name, fn in runs.items()}
    output_mib = n_text * n_image * 4 / 2**20
    rows = []
    label = f"{n_text} x {n_image}, D={dim}"
    rows.append(row(f"ranking time, {label}", seconds["modular"], seconds["plain"], GOAL, chunk=chunk))
    rows.append(
        row(
            f"ranking peak memory, {label}", memory_figure(memory["modular"]), memory_figure(memory["plain"]), GOAL,
            chunk=chunk, similarity_matrix_mib=output_mib,
        )
    )
    notes = [
        f"search_images(texts, gallery, k={TOP_K}, scoring, chunk_size={chunk}) on random unit-norm embeddings "
        "(masks: each dimension on with probability 0.5); the gallery (images and their squares) is built once, "
        f"outside the timing. The ({n_text}, {n_image}) similarity matrix alone is {output_mib:,.1f} MiB.",
        "peak memory as in the loss benchmark (torch.profiler allocations on CPU, max_memory_allocated on CUDA).",
    ]
    settings = {"texts": n_text, "images": n_image, "dim": dim, "chunk": chunk, "top_k": TOP_K, "repeats": repeats}
    title = "Ranking captions against a gallery: modular vs plain scoring"
    return section("retrieval", title, device, settings, rows, notes, ("modular", "plain"))


def arguments():
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--texts", type=int, default=1000)
    p.add_argument("--images", type=int, default=100_000)
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--chunk", type=int, default=1024, help="captions per block (the retrieval helper's default)")
    return p


if __name__ == "__main__":
    main_for("retrieval", run, arguments())
