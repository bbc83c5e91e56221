"""Fine-tuning: training data (`data`), the reference's recipe (`loop`), one process or many (`distributed`)."""
