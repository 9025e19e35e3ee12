# Writes llama.cpp's ids (one line per case, as in a .out file) for the cases of
# ggml-vocab-INPUTS.gguf.inp tokenized with ggml-vocab-VOCAB.gguf, using llama-tokenize
# from the llama.cpp tree vendored in the llama-cpp-python 0.3.36 source package (built
# by hand; paths below). Usage: python3 llamacpp_vocab_ids.py VOCAB INPUTS > FILE
import subprocess, sys, os, json, ast
B='/root/.cache/kvscope-ref/llama-cpp-python-0.3.36/build/bin'
M='/root/.cache/kvscope-ref/llama-cpp-python-0.3.36/vendor/llama.cpp/models'
vocab, inp = sys.argv[1], sys.argv[2]
raw=open(f'{M}/ggml-vocab-{inp}.gguf.inp', encoding='utf-8').read()
sep='\n__ggml_vocab_test__\n'
cases=[]; pos=0
while pos < len(raw):
    n=raw.find(sep,pos)
    if n<0: cases.append(raw[pos:]); break
    cases.append(raw[pos:n]); pos=n+len(sep)
out=[]
for c in cases:
    open('/tmp/case.txt','w',encoding='utf-8').write(c)
    r=subprocess.run([f'{B}/llama-tokenize','-m',f'{M}/ggml-vocab-{vocab}.gguf','-f','/tmp/case.txt','--ids','--no-bos','--no-parse-special','--log-disable'],capture_output=True,text=True,env={**os.environ,'LD_LIBRARY_PATH':B})
    line=[l for l in r.stdout.splitlines() if l.startswith('[')]
    ids=ast.literal_eval(line[-1]) if line else None
    if ids is None: print('FAIL', repr(c), r.stdout[-300:], r.stderr[-300:], file=sys.stderr); ids=[]
    out.append(' '.join(map(str,ids)))
print('\n'.join(out))
