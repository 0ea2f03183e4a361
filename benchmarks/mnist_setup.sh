# Sourced by finetune_vs_scratch.sh and lora_vs_full.sh (with R set): W = the shipped Fashion-MNIST pipeline, and in
# $R the MNIST digit classifier (features/) and MNIST tokenized by the shipped tokenizer (tokens-train/, tokens-test/).
W=$(python3 -c 'import maskgit, pathlib; print(pathlib.Path(maskgit.__file__).parent / "weights/fashion-mnist")')
mkdir -p "$R"
[ -f "$R/features/model.safetensors" ] || maskgit train-features --data mnist --out "$R/features" --quiet
[ -d "$R/tokens-train" ] || maskgit tokenize --model "$W/tokenizer" --data mnist --split train --out "$R/tokens-train"
[ -d "$R/tokens-test" ] || maskgit tokenize --model "$W/tokenizer" --data mnist --split test --out "$R/tokens-test"
