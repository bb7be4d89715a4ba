"""Synthetic datasets in the real datasets' layouts (SPEC §5), from clean photos.

Clean photos come from scikit-image's bundled colour photos (they ship inside the package, so
nothing is downloaded) and, optionally, a folder of the user's images. Each dataset item is
drawn from its own generator ``numpy.random.default_rng([seed, stream, index])``:

* item ``i`` does not depend on how many items come before or after it, nor on the number of
  worker processes, so a seed reproduces a dataset file for file;
* train and test items use different ``stream`` numbers (train 0, the test splits 1–4, RVSD
  train videos 10 and test videos 11), so no test item shares a seed sequence with a train item.
  (With only a handful of bundled photos, test crops do come from the same photos as train
  crops; pass ``source_folder`` with separate photos for a stricter split.)

Files are written atomically (:func:`mofme.data.io.atomic_write`: a hidden temporary file renamed
when complete), and ``meta.json`` (seed, sizes, per-file weather type, severity and PSNR) is
written last.

Modules: :mod:`~mofme.data.synth.allweather`, :mod:`~mofme.data.synth.rvsd` and
:mod:`~mofme.data.synth.bench` write the datasets, :mod:`~mofme.data.synth.sheet` the contact
sheet; all of them run per-item jobs (:mod:`~mofme.data.synth.items`: the draws of one item and
its files) through :mod:`~mofme.data.synth.runner` (output folder, worker pool). Clean content
comes from :mod:`mofme.data.content`, clips from :mod:`mofme.data.clips`, weather from
:mod:`mofme.data.weather`.
"""

from mofme.data.synth.allweather import (
    TEST_SPLITS,
    TRAIN_LIST,
    TRANSWEATHER_RAINDROP,
    SplitSpec,
    write_allweather,
)
from mofme.data.synth.bench import BENCH_STREAM, write_benchmark
from mofme.data.synth.items import (
    IDENTITY_SHARE,
    LIGHT_STRENGTH,
    RENDER_SCALE,
    SEVERITY_WEIGHTS,
    TRAIN_TYPES,
    VIEW_SCALE,
)
from mofme.data.synth.rvsd import RVSD_STREAMS, write_rvsd
from mofme.data.synth.sheet import contact_sheet

__all__ = [
    "BENCH_STREAM",
    "IDENTITY_SHARE",
    "LIGHT_STRENGTH",
    "RENDER_SCALE",
    "RVSD_STREAMS",
    "SEVERITY_WEIGHTS",
    "TEST_SPLITS",
    "TRAIN_LIST",
    "TRAIN_TYPES",
    "TRANSWEATHER_RAINDROP",
    "VIEW_SCALE",
    "SplitSpec",
    "contact_sheet",
    "write_allweather",
    "write_benchmark",
    "write_rvsd",
]
