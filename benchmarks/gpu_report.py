"""benchmarks/gpu_check.py's summary.md: the targets met, missed or unmeasured, the figures the
README's GPU table takes, then every stage's tables."""

# name, stage, value, comparison, threshold, unit: the targets of the reference configuration on an
# H200-class GPU (2x and 1.8x the tuned reference implementation's 45.6 / 77 images/s)
TARGETS = (
    ("multi-task training, tuned dense, after warm-up", "bench_gpu", "train_tuned_dense_images_per_s", ">=", 91,
     "images/s"),
    ("multi-task training, tuned top-p, after warm-up", "bench_gpu", "train_tuned_top_p_images_per_s", ">=", 137,
     "images/s"),
    ("inference at batch 1, top-p", "bench_gpu", "inference_top_p_ms", "<=", 9, "ms"),
    ("DeepLabV3+ OS 8, 1024x1024, batch 12, tuned", "bench_gpu", "deeplab_tuned_images_per_s", ">=", 60, "images/s"),
    ("top-p step: no host synchronisation but the dispatch plan's and the loss check's", "cuda_tests", "sync_test", "==", "passed", ""),
)

# row of the README's GPU table, stage, value, format
README_ROWS = (
    ("multi-task training, fp32 as shipped (images/s)", "bench_gpu", "train_plain_dense_images_per_s", "{:.1f}"),
    ("multi-task training, tuned dense (images/s)", "bench_gpu", "train_tuned_dense_images_per_s", "{:.1f}"),
    ("multi-task training, tuned top-p (images/s)", "bench_gpu", "train_tuned_top_p_images_per_s", "{:.1f}"),
    ("multi-task training, 1 expert per task (images/s)", "bench_gpu", "train_single_expert_images_per_s", "{:.1f}"),
    ("peak memory, tuned dense / top-p (GiB)", "bench_gpu", ("train_tuned_dense_peak_gib", "train_tuned_top_p_peak_gib"),
     "{:.1f}"),
    ("inference at batch 1, top-p (ms)", "bench_gpu", "inference_top_p_ms", "{:.2f}"),
    ("DeepLabV3+ OS 8, plain / tuned (images/s)", "bench_gpu", ("deeplab_plain_images_per_s",
                                                                "deeplab_tuned_images_per_s"), "{:.1f}"),
    ("compiled backbone / eager, top-p step", "compile", "compile_speedup", "{:.2f}x"),
    ("synthetic run 712x1072, dense / top-p (images/s, data loading included)", "synthetic_run",
     ("synthetic_dense_images_per_s", "synthetic_top_p_images_per_s"), "{:.1f}"),
    ("demo step peak memory (GiB)", "cuda_tests", "demo_step_peak_memory_gib", "{}"),
    ("bf16 matmul peak (TFLOP/s)", "environment", "matmul_peak_tflops", "{:.0f}"),
)


def _value(results, stage, key):
    values = results.get(stage, {}).get("values", {})
    if key == "matmul_peak_tflops" and "matmul_peak_flops" in values:
        return values["matmul_peak_flops"] / 1e12
    return values.get(key)


def target_status(target, results, meta):
    """"met", "missed" or "unmeasured (why)", and the measured value (None when unmeasured)."""
    _, stage, key, comparison, threshold, _ = target
    if meta["smoke"] or not str(meta["device"]).startswith("cuda"):
        return "unmeasured (not a CUDA run)", _value(results, stage, key)
    value = _value(results, stage, key)
    if value is None:
        return f"unmeasured ({results.get(stage, {}).get('status', 'stage not run')})", None
    met = {">=": lambda: value >= threshold, "<=": lambda: value <= threshold, "==": lambda: value == threshold}
    return ("met" if met[comparison]() else "missed"), value


def _markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell).replace("|", "/") for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _formatted(value, form):
    if value is None:
        return "unmeasured"
    return form.format(value) if isinstance(value, (int, float)) else str(value)


def summary_markdown(meta, results):
    card = results.get("environment", {}).get("values", {}).get("card", "unknown (environment stage not run)")
    lines = [f"# GPU check: {card}", "",
             f"`{meta['command']}`, started {meta['started']}, {meta.get('elapsed_s', 0):.0f} s of the "
             f"{meta['budget_s']:.0f} s budget" + (" (smoke run: tiny sizes, figures mean nothing)" if meta["smoke"]
                                                    else ""), "",
             "## Stages", "",
             _markdown_table(["stage", "status", "seconds"],
                             [[name, record.get("status", ""), record.get("seconds", "")]
                              for name, record in results.items()]), "",
             "## Targets (reference configuration, for an H200-class GPU)", ""]
    rows = []
    for target in TARGETS:
        status, value = target_status(target, results, meta)
        shown = "" if value is None else (f"{value:.2f}" if isinstance(value, float) else str(value))
        rows.append([target[0], f"{target[3]} {target[4]} {target[5]}".strip(), shown, status])
    lines += [_markdown_table(["target", "wanted", "measured", "status"], rows), "",
              f"## For the README's GPU table ({card})", ""]
    readme = []
    for label, stage, keys, form in README_ROWS:
        keys = keys if isinstance(keys, tuple) else (keys,)
        readme.append([label, " / ".join(_formatted(_value(results, stage, key), form) for key in keys)])
    lines += [_markdown_table(["measurement", card], readme), ""]
    for name, record in results.items():
        lines += [f"## {name}: {record.get('status', '')}", ""]
        for note in record.get("notes", []):
            lines += [f"- {note}"]
        for table in record.get("tables", []):
            lines += ["", f"**{table['title']}**", "", _markdown_table(table["header"], table["rows"])]
        if "results_md" in record.get("values", {}):
            lines += ["", record["values"]["results_md"]]
        lines.append("")
    return "\n".join(lines)
