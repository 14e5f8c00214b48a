"""A tiny generator with every array field, for the fields plumbing tests: values encode (index, frame).

video[t] = (7 i + t) % 256 everywhere, mask[t] = (i + t) % 256, flow[t] = (t, i % 100): a window read back
tells which sample and which frames it came from.
"""

from __future__ import annotations

import numpy as np

from datagen.generators import requested_fields
from datagen.store.sample import Sample, sample_key


class FieldsGenerator:
    name = "fieldsgen"
    version = "1"
    fields = ("video", "mask", "flow")

    def validate(self, params: dict) -> dict:
        return {"frames": int(params.get("frames", 6)), "size": int(params.get("size", 5))}

    def sample_shape(self, params: dict) -> tuple[int, int, int, int]:
        return (params["frames"], params["size"], params["size"], 1)

    def generate(self, params: dict, seed: int, start: int, stop: int):
        t, s = params["frames"], params["size"]
        wanted = requested_fields(params)
        steps = np.arange(t)
        for i in range(start, stop):
            video = np.broadcast_to(
                ((7 * i + steps) % 256).astype(np.uint8)[:, None, None, None], (t, s, s, 1)
            )
            fields = {}
            if "mask" in wanted:
                fields["mask"] = np.broadcast_to(
                    ((i + steps) % 256).astype(np.uint8)[:, None, None], (t, s, s)
                )
            if "flow" in wanted:
                flow = np.empty((t - 1, s, s, 2), np.float16)
                flow[..., 0] = steps[:-1, None, None]
                flow[..., 1] = i % 100
                fields["flow"] = flow
            yield Sample(sample_key(i), np.ascontiguousarray(video), {"index": i}, fields)


FIELDS = FieldsGenerator()
