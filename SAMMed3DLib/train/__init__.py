"""Fine-tuning: its settings (`config`), training data (`data`), the reference's recipe (`loop`), one process or many
(`distributed`)."""

DEVICES = ("auto", "cpu", "cuda")  # training runs on CUDA or the CPU (see `distributed.choose_device`)
