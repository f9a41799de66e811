"""``shimmy generate``: run the engine in this process and stream to stdout."""

from __future__ import annotations

import argparse
import sys

from shimmy.api import params
from shimmy.config import Config
from shimmy.engine.pool import ModelPool
from shimmy.engine.scheduler import GenerationError
from shimmy.errors import ApiError
from shimmy.models.registry import ModelRegistry


async def generate(config: Config, args: argparse.Namespace) -> int:
    settings = config.engine_settings()
    pool = ModelPool(ModelRegistry(config.discover()), settings)
    try:
        request = {"prompt": args.prompt, "max_tokens": args.max_tokens,
                   "temperature": args.temperature, "seed": args.seed}
        sampling = params.sampling(request)
        max_tokens = params.integer(request, "max_tokens", 100, 1, 1_000_000)
        model = await pool.get(args.model)
        generation = model.generate(args.prompt, max_tokens, sampling)
        async for piece in generation:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        return 0
    except ApiError as exc:
        print(f"\nerror: {exc.message}: {exc.details}", file=sys.stderr)
        return 1
    except GenerationError as exc:
        print(f"\nerror: generation failed: {exc}", file=sys.stderr)
        return 1
    finally:
        pool.close()
