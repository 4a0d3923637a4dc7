"""Tests of runners/benchmark_model.py on full, realistic ``benchmark_model`` outputs."""

from __future__ import annotations

import pytest

from runners.benchmark_model import (
    BenchmarkModelResult,
    Delegation,
    OpTypeRow,
    parse_benchmark_model,
    stats_ms,
    strip_log_prefix,
)

# A recent build on Android (XNNPACK, --report_peak_memory_footprint=true), INFO prefixes.
MODERN = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Num threads: [4]
INFO: Graph: [/data/local/tmp/mobilenet_v2_1.0_224.tflite]
INFO: Signature to run: []
INFO: Report the peak memory footprint: [1]
INFO: #threads used for CPU inference: [4]
INFO: Use xnnpack: [1]
INFO: Loaded model /data/local/tmp/mobilenet_v2_1.0_224.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
VERBOSE: Replacing 66 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.
INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.
INFO: The input model file size (MB): 13.9787
INFO: Initialized session in 87.639ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=5 first=106436 curr=106054 min=105960 max=106436 avg=106065 std=176 p5=105960 median=106010 p95=106436

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=50 first=106022 curr=105780 min=105416 max=106528 avg=105784 std=260 p5=105485 median=105718 p95=106281

INFO: Inference timings in us: Init: 87639, First inference: 106436, Warmup (avg): 106065, Inference (avg): 105784
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=14.4414 overall=14.8164
INFO: Overall peak memory footprint (MB) via periodic monitoring: 93.2383
INFO: Memory status at the end of exeution:
INFO: - VmRSS              : 90 MB
INFO: + RssAnnon           : 71 MB
INFO: + RssFile + RssShmem : 19 MB
"""

# TF 2.3-era build: no log prefixes, no percentiles, "Peak memory footprint (MB)".
OLDER = """\
STARTING!
Min num runs: [50]
Min runs duration (seconds): [1]
Max runs duration (seconds): [150]
Inter-run delay (seconds): [-1]
Num threads: [1]
Benchmark name: []
Output prefix: []
Min warmup runs: [1]
Min warmup runs duration (seconds): [0.5]
Graph: [mobilenet_v1_1.0_224.tflite]
Input layers: []
Input shapes: []
Use nnapi : [0]
Use legacy nnapi : [0]
Use gpu : [0]
Allow fp16 : [0]
Require full delegation : [0]
Enable op profiling: [0]
Max profiling buffer entries: [1024]
Loaded model mobilenet_v1_1.0_224.tflite
The input model file size (MB): 16.9008
Initialized session in 1.859ms.
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=4 first=148468 curr=130166 min=130166 max=148468 avg=136082 std=7390

Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=50 first=129683 curr=128940 min=128543 max=131027 avg=129449 std=508

Inference timings in us: Init: 1859, First inference: 148468, Warmup (avg): 136082, Inference (avg): 129449
Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your one's own risk.
Peak memory footprint (MB): init=3.17969 overall=27.9492
"""

# A large model on a small board, absl-style log prefixes, numbers in scientific notation.
SCIENTIFIC = """\
I0000 00:00:1732700000.101010    4242 benchmark_tflite_model.cc:560] STARTING!
I0000 00:00:1732700000.101234    4242 benchmark_tflite_model.cc:570] Graph: [/home/pi/whisper_tiny_encoder.tflite]
I0000 00:00:1732700001.512000    4242 benchmark_tflite_model.cc:900] The input model file size (MB): 32.9016
I0000 00:00:1732700001.512100    4242 benchmark_tflite_model.cc:905] Initialized session in 1234.56ms.
I0000 00:00:1732700001.512200    4242 benchmark_model.cc:190] Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
I0000 00:00:1732700004.614700    4242 benchmark_model.cc:195] count=1 curr=3102450
I0000 00:00:1732700004.614800    4242 benchmark_model.cc:190] Running benchmark for at least 10 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
I tensorflow/lite/tools/benchmark/benchmark_model.cc:195] count=10 first=2.95034e+06 curr=2.91e+06 min=2.90112e+06 max=2.95034e+06 avg=2.91853e+06 std=14522 p5=2.90112e+06 median=2.91473e+06 p95=2.95034e+06
I tensorflow/lite/tools/benchmark/benchmark_model.cc:80] Inference timings in us: Init: 1.23456e+06, First inference: 3.10245e+06, Warmup (avg): 3.10245e+06, Inference (avg): 2.91853e+06
I0000 00:00:1732700033.800000    4242 benchmark_model.cc:85] Memory footprint delta from the start of the tool (MB): init=61.25 overall=1.3275e+02
"""

# Android GPU delegate that takes only part of the graph (an SSD detector with its custom op).
GPU_PARTIAL = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Graph: [/data/local/tmp/ssd_mobilenet_v1.tflite]
INFO: Use gpu: [1]
INFO: Loaded model /data/local/tmp/ssd_mobilenet_v1.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite delegate for GPU.
INFO: GPU delegate created.
ERROR: Following operations are not supported by GPU delegate:
CUSTOM TFLite_Detection_PostProcess: Operation is not supported.
DEQUANTIZE:
63 operations will run on the GPU, and the remaining 3 operations will run on the CPU.
INFO: Replacing 63 out of 66 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 2 partitions for the whole graph.
INFO: Initialized OpenCL-based API.
INFO: Created 1 GPU delegate kernels.
INFO: Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate w/ 1 delegate kernels.
INFO: The input model file size (MB): 4.0153
INFO: Initialized session in 1451.51ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=56 first=11147 curr=8146 min=7055 max=12036 avg=8779.68 std=1115 p5=7102 median=8650 p95=11020

INFO: Running benchmark for at least 50 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=110 first=8325 curr=10016 min=7863 max=10688 avg=8680.33 std=591 p5=7901 median=8602 p95=9954

INFO: Inference timings in us: Init: 1451507, First inference: 11147, Warmup (avg): 8779.68, Inference (avg): 8680.33
INFO: Memory footprint delta from the start of the tool (MB): init=63.4883 overall=63.4883
"""

# XNNPACK with --enable_op_profiling=true: an init-profiling table, then the regular-run tables
# (node types with spaces and commas), followed by the profiler's own "Timings ... count=" line.
OP_PROFILING = """\
INFO: STARTING!
INFO: Num threads: [4]
INFO: Graph: [mobile_object_localizer_v1.tflite]
INFO: Enable op profiling: [1]
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: Initialized session in 16.772ms.
INFO: Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=67 first=8781 curr=7197 min=6335 max=9775 avg=7514.93 std=419

INFO: Running benchmark for at least 10 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=67 first=7176 curr=7505 min=6373 max=7775 avg=7454.97 std=256

INFO: Inference timings in us: Init: 16772, First inference: 8781, Warmup (avg): 7514.93, Inference (avg): 7454.97
INFO: Memory footprint delta from the start of the tool (MB): init=8.44922 overall=10.8789
INFO: Profiling Info for Benchmark Initialization:
============================== Run Order ==============================
\t                         [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t             ModifyGraphWithDelegate\t   14.842\t   14.842\t 99.317%\t 99.317%\t  3428.000\t        1\tModifyGraphWithDelegate/0
\t                     AllocateTensors\t    0.102\t    0.102\t  0.683%\t100.000%\t     0.000\t        1\tAllocateTensors/0

Number of nodes executed: 2
============================== Summary by node type ==============================
\t                         [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t             ModifyGraphWithDelegate\t        1\t    14.842\t    99.317%\t    99.317%\t  3428.000\t        1
\t                     AllocateTensors\t        1\t     0.102\t     0.683%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=1 curr=14944
Memory (bytes): count=0
2 nodes observed



INFO: Operator-wise Profiling Info for Regular Benchmark Runs:
============================== Run Order ==============================
\t                         [node type]\t  [first]\t [avg ms]\t     [%]\t  [cdf%]\t  [mem KB]\t[times called]\t[Name]
\t       Convolution (NHWC, QU8) IGEMM\t    0.267\t    0.278\t  3.783%\t  3.783%\t     0.000\t        1\tDelegate/Convolution (NHWC, QU8) IGEMM:0
\t      Convolution (NHWC, QU8) DWConv\t    0.243\t    0.271\t  3.681%\t  7.464%\t     0.000\t        1\tDelegate/Convolution (NHWC, QU8) DWConv:1

Number of nodes executed: 88
============================== Summary by node type ==============================
\t                         [Node type]\t  [count]\t  [avg ms]\t    [avg %]\t    [cdf %]\t  [mem KB]\t[times called]
\t        Convolution (NHWC, QU8) GEMM\t       41\t     3.104\t    42.377%\t    42.377%\t     0.000\t       41
\t      Convolution (NHWC, QU8) DWConv\t       27\t     2.262\t    30.883%\t    73.260%\t     0.000\t       27
\t       Convolution (NHWC, QU8) IGEMM\t        1\t     0.278\t     3.795%\t    77.055%\t     0.000\t        1
\t                       Add (ND, QU8)\t       10\t     0.109\t     1.488%\t    78.543%\t     0.000\t       10
\t                   DETECTION_POSTPROCESS\t        1\t     1.572\t    21.457%\t   100.000%\t     0.000\t        1

Timings (microseconds): count=67 first=7118 curr=7402 min=6301 max=7700 avg=7325.1 std=250
Memory (bytes): count=0
88 nodes observed
"""


def test_modern_output_with_info_prefixes() -> None:
    r = parse_benchmark_model(MODERN)
    assert (r.count, r.first_us, r.curr_us, r.min_us, r.max_us) == (50, 106022, 105780, 105416, 106528)
    assert (r.avg_us, r.std_us, r.p5_us, r.median_us, r.p95_us) == (105784, 260, 105485, 105718, 106281)
    assert (r.init_us, r.first_inference_us, r.warmup_avg_us, r.inference_avg_us) == (
        87639,
        106436,
        106065,
        105784,
    )
    assert (r.memory_init_mb, r.memory_overall_mb, r.memory_is_delta) == (14.4414, 14.8164, True)
    assert r.peak_memory_mb == 93.2383
    assert r.model_size_mb == 13.9787
    assert (r.delegate_name, r.nodes_delegated, r.nodes_total) == ("TfLiteXNNPackDelegate", 66, 66)
    assert r.fallback_warnings == [] and r.delegate_fallback is False
    assert r.op_profile == []


def test_warmup_line_is_not_the_timed_run() -> None:
    r = parse_benchmark_model(MODERN)
    assert r.count == 50 and r.avg_us != 106065  # 106065 is the warm-up average


def test_older_output_without_prefixes_or_percentiles() -> None:
    r = parse_benchmark_model(OLDER)
    assert (r.count, r.avg_us, r.std_us, r.min_us, r.max_us) == (50, 129449, 508, 128543, 131027)
    assert (r.p5_us, r.median_us, r.p95_us) == (None, None, None)
    assert (r.memory_init_mb, r.memory_overall_mb, r.memory_is_delta) == (3.17969, 27.9492, False)
    assert r.peak_memory_mb is None  # no periodic monitoring in that build
    assert r.warmup_avg_us == 136082 and r.init_us == 1859
    assert r.delegate_name is None and r.delegate_fallback is False
    assert stats_ms(r) == {
        "count": 50,
        "mean": pytest.approx(129.449),
        "median": None,
        "p5": None,
        "p95": None,
        "std": pytest.approx(0.508),
        "min": pytest.approx(128.543),
        "max": pytest.approx(131.027),
    }


def test_scientific_notation_and_glog_prefixes() -> None:
    r = parse_benchmark_model(SCIENTIFIC)
    assert r.count == 10
    assert r.first_us == 2950340.0 and r.curr_us == 2910000.0
    assert r.avg_us == pytest.approx(2918530.0) and r.median_us == pytest.approx(2914730.0)
    assert r.init_us == pytest.approx(1234560.0) and r.inference_avg_us == pytest.approx(2918530.0)
    assert (r.memory_init_mb, r.memory_overall_mb) == (61.25, 132.75)
    assert r.model_size_mb == 32.9016
    s = stats_ms(r)
    assert s["mean"] == pytest.approx(2918.53) and s["p95"] == pytest.approx(2950.34)
    assert s["std"] == pytest.approx(14.522) and s["min"] == pytest.approx(2901.12)


def test_gpu_delegate_partially_applied() -> None:
    r = parse_benchmark_model(GPU_PARTIAL)
    assert (r.delegate_name, r.nodes_delegated, r.nodes_total) == ("TfLiteGpuDelegateV2", 63, 66)
    assert r.delegations == [Delegation("TfLiteGpuDelegateV2", 63, 66)]
    assert r.delegate_fallback is True
    assert r.fallback_warnings == [
        "Following operations are not supported by GPU delegate:",
        "CUSTOM TFLite_Detection_PostProcess: Operation is not supported.",
        "DEQUANTIZE:",
        "63 operations will run on the GPU, and the remaining 3 operations will run on the CPU.",
        "Explicitly applied GPU delegate, and the model graph will be partially executed by the delegate"
        " w/ 1 delegate kernels.",
    ]
    assert (r.count, r.avg_us, r.median_us, r.p95_us) == (110, 8680.33, 8602, 9954)
    assert stats_ms(r)["median"] == pytest.approx(8.602)


def test_delegate_that_declines_the_whole_graph() -> None:
    text = MODERN.replace(
        "INFO: Explicitly applied XNNPACK delegate, and the model graph will be completely executed by the delegate.",
        "INFO: Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate.",
    ).replace(
        "VERBOSE: Replacing 66 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.\n",
        "",
    )
    r = parse_benchmark_model(text)
    assert r.delegate_fallback is True and r.nodes_delegated is None
    assert r.fallback_warnings == [
        "Though NNAPI delegate is explicitly applied, the model graph will not be executed by the delegate."
    ]


def test_failed_delegate_and_two_delegates() -> None:
    text = MODERN.replace(
        "VERBOSE: Replacing 66 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.",
        "VERBOSE: Replacing 5 out of 64 node(s) with delegate (TfLiteNnapiDelegate) node, yielding 5 partitions for the whole graph.\n"
        "VERBOSE: Replacing 59 out of 62 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 5 partitions for the whole graph.\n"
        "ERROR: Failed to apply GPU delegate.",
    )
    r = parse_benchmark_model(text)
    assert r.delegations == [
        Delegation("TfLiteNnapiDelegate", 5, 64),
        Delegation("TfLiteXNNPackDelegate", 59, 62),
    ]
    assert (r.delegate_name, r.nodes_delegated, r.nodes_total) == ("TfLiteNnapiDelegate", 5, 64)
    assert r.fallback_warnings == ["Failed to apply GPU delegate."]
    assert r.delegate_fallback is True


def test_subgraphs_are_summed_and_old_replacing_line_has_no_total() -> None:
    text = MODERN.replace(
        "VERBOSE: Replacing 66 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.",
        "VERBOSE: Replacing 17 out of 21 node(s) with delegate (TfLiteQnnDelegate) node, yielding 9 partitions for subgraph 0.\n"
        "VERBOSE: Replacing 4 out of 4 node(s) with delegate (TfLiteQnnDelegate) node, yielding 1 partitions for subgraph 1.",
    )
    r = parse_benchmark_model(text)
    assert (r.nodes_delegated, r.nodes_total, r.delegate_fallback) == (21, 25, True)
    old = MODERN.replace(
        "Replacing 66 out of 66 node(s) with delegate (TfLiteXNNPackDelegate) node, yielding 1 partitions for the whole graph.",
        "Replacing 1 node(s) with delegate (TfLiteGpuDelegateV2) node, yielding 1 partitions.",
    )
    r = parse_benchmark_model(old)
    assert (r.delegate_name, r.nodes_delegated, r.nodes_total) == ("TfLiteGpuDelegateV2", 1, None)
    assert r.delegate_fallback is False


def test_op_profiling_summary_by_node_type_of_regular_runs() -> None:
    r = parse_benchmark_model(OP_PROFILING)
    # the benchmark's own timed-run line, not the profiler's "Timings (microseconds): count=67 ..."
    assert (r.count, r.avg_us, r.std_us) == (67, 7454.97, 256)
    assert r.op_profile == [
        OpTypeRow("Convolution (NHWC, QU8) GEMM", 41, 3.104, 42.377),
        OpTypeRow("Convolution (NHWC, QU8) DWConv", 27, 2.262, 30.883),
        OpTypeRow("Convolution (NHWC, QU8) IGEMM", 1, 0.278, 3.795),
        OpTypeRow("Add (ND, QU8)", 10, 0.109, 1.488),
        OpTypeRow("DETECTION_POSTPROCESS", 1, 1.572, 21.457),
    ]
    assert sum(row.pct for row in r.op_profile) == pytest.approx(100.0)
    assert r.op_profile[0].node_type == r.op_profile[0][0]  # rows are tuples too


def test_op_profiling_tolerates_spacing_and_column_order() -> None:
    table = (
        "Operator-wise Profiling Info for Regular Benchmark Runs:\n"
        "============================== Summary by node type ==============================\n"
        " [Node type]  [avg ms] [count]   [avg %]    [cdf %]  [mem KB]\n"
        "CONV_2D   10.776  15  66.279%  66.279%  0.000\n"
        "     DEPTHWISE_CONV_2D        5.288      13     32.525%    98.804%     0.000\n"
        "\n"
    )
    r = parse_benchmark_model(OLDER + table)
    assert r.op_profile == [
        OpTypeRow("CONV_2D", 15, 10.776, 66.279),
        OpTypeRow("DEPTHWISE_CONV_2D", 13, 5.288, 32.525),
    ]


def test_all_same_timing_line() -> None:
    text = OLDER.replace(
        "count=50 first=129683 curr=128940 min=128543 max=131027 avg=129449 std=508",
        "count=50 curr=1000(all same)",
    )
    r = parse_benchmark_model(text)
    assert (r.count, r.avg_us, r.min_us, r.max_us, r.std_us, r.median_us) == (50, 1000, 1000, 1000, 0.0, 1000)


def test_very_old_average_inference_timings_line() -> None:
    text = OLDER.replace(
        "Inference timings in us: Init: 1859, First inference: 148468, Warmup (avg): 136082, Inference (avg): 129449",
        "Average inference timings in us: Warmup: 83235, Init: 38467, no stats: 79760.9",
    )
    r = parse_benchmark_model(text)
    assert (r.warmup_avg_us, r.init_us, r.inference_avg_us, r.first_inference_us) == (
        83235,
        38467,
        79760.9,
        None,
    )


def test_truncated_after_warmup_raises_with_last_lines() -> None:
    cut = MODERN[: MODERN.index("INFO: count=50")]
    with pytest.raises(ValueError) as info:
        parse_benchmark_model(cut)
    msg = str(info.value)
    assert msg.startswith("benchmark_model output has no timing line for the timed runs")
    assert "Running benchmark for at least 50 iterations" in msg  # the last line is quoted
    assert msg.startswith(
        "benchmark_model output has no timing line for the timed runs ('count=... avg=...'); it ends with: "
    )
    assert "\n" not in msg
    assert len(msg.split("it ends with: ")[1]) <= 300


def test_crash_before_any_timing_raises() -> None:
    crashed = (
        "INFO: STARTING!\n"
        "INFO: Loaded model /data/local/tmp/model_int4.tflite\n"
        "ERROR: Didn't find op for builtin opcode 'FULLY_CONNECTED' version '13'. An older version of this "
        "builtin might be supported. Are you using an old TFLite binary with a newer model?\n"
        "ERROR: Registration failed.\n"
        "Failed to construct interpreter\n"
        "Benchmarking failed.\n"
    )
    with pytest.raises(
        ValueError,
        match=r"it ends with: .*Registration failed\. \| Failed to construct interpreter \| Benchmarking failed\.",
    ):
        parse_benchmark_model(crashed)
    with pytest.raises(ValueError, match=r"\(no output\)"):
        parse_benchmark_model("")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("INFO: count=5 avg=1", "count=5 avg=1"),
        ("I tensorflow/lite/tools/benchmark/benchmark_model.cc:58] count=5", "count=5"),
        ("I1127 22:20:01.123456  1234 benchmark_model.cc:58] count=5", "count=5"),
        (
            "2018-09-10 12:36:15.624324: I tensorflow/tools/benchmark/benchmark_model.cc:469] Graph: [x]",
            "Graph: [x]",
        ),
        ("11-27 22:20:01.123  1234  1234 I tflite  : Replacing 1 node(s)", "Replacing 1 node(s)"),
        ("I/tflite  ( 1234): INFO: Created 1 GPU delegate kernels.", "Created 1 GPU delegate kernels."),
        ("Timings (microseconds): count=67", "Timings (microseconds): count=67"),
    ],
)
def test_strip_log_prefix(line: str, message: str) -> None:
    assert strip_log_prefix(line) == message


def test_unknown_bracket_prefix_is_tolerated() -> None:
    text = OLDER.replace(
        "count=50 first=129683 curr=128940 min=128543 max=131027 avg=129449 std=508",
        "[benchmark 4242] count=50 first=129683 curr=128940 min=128543 max=131027 avg=129449 std=508",
    )
    r = parse_benchmark_model(text)
    assert (r.count, r.avg_us) == (50, 129449)


def test_result_defaults() -> None:
    r = BenchmarkModelResult(count=3, avg_us=1500.0)
    assert stats_ms(r)["mean"] == 1.5 and r.fallback_warnings == [] and r.op_profile == []
