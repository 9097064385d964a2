#!/bin/bash
python /opt/NeMo-Aligner/examples/nlp/gpt/train_gpt_sft.py --config-path=. --config-name=sft_chat.yaml
