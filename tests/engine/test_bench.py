"""`hybridssl bench`: the JSON line the performance issue promises, and FLOP counts that track the work."""

import json

from hybridssl.cli import main
from hybridssl.engine.bench import bench

PROMISED = ("images_per_second", "method", "img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads",
            "decoder_dim", "decoder_depth", "decoder_heads", "mask_ratio", "batch_size", "device")  # fmt: skip


def test_json_line_has_every_promised_field(capsys):
    assert main(["bench", "--method", "mae", "--model", "vit-pico", "--batch-size", "8", "--steps", "1", "--warmup", "1", "--json"]) == 0
    line = [s for s in capsys.readouterr().out.splitlines() if s.startswith("{")][-1]
    result = json.loads(line)
    assert set(PROMISED) <= set(result)
    assert result["method"] == "mae" and result["batch_size"] == 8 and result["mask_ratio"] == 0.75
    assert (result["img_size"], result["patch_size"], result["in_chans"], result["embed_dim"]) == (28, 4, 1, 128)
    assert result["images_per_second"] > 0 and 0 < result["flops_utilization"]


def test_flops_follow_the_kept_tokens():
    """The encoder runs only kept tokens: lowering the mask ratio must raise the counted FLOPs."""
    flops = {}
    for ratio in (0.75, 0.25):
        flags = {"method": "mae", "model": "vit-pico", "batch_size": 8, "method_args": {"mask_ratio": ratio}}
        flops[ratio] = bench(flags, steps=1, warmup=0, peak=False)["flops_per_step"]
    assert flops[0.25] > 1.5 * flops[0.75]
