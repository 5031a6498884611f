"""asv benchmarks for fastnn (bench_train.py); settings in ../asv.conf.json."""
