#!/usr/bin/env python3
# Measures cold start of `ondevice serve` to a 200 from /readyz (fresh home each time: database,
# bootstrap key) and the idle RSS 2 s later. Usage: cargo build --release && scripts/measure-startup.py
import subprocess, time, tempfile, urllib.request, os, statistics, socket
def free_port():
    s=socket.socket(); s.bind(("127.0.0.1",0)); p=s.getsockname()[1]; s.close(); return p
times=[]; rss=[]
for i in range(10):
    home=tempfile.mkdtemp(); port=free_port()
    env=dict(os.environ, ONDEVICE_HOME=home, ONDEVICE_LISTEN=f"127.0.0.1:{port}", ONDEVICE_CONFIG=os.path.join(home,"none.toml"))
    open(env["ONDEVICE_CONFIG"],"w").close()
    t0=time.perf_counter()
    p=subprocess.Popen(["target/release/ondevice","serve"],env=env,stdout=subprocess.DEVNULL,stderr=subprocess.DEVNULL)
    while True:
        try:
            if urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz",timeout=1).status==200: break
        except Exception: time.sleep(0.002)
    times.append((time.perf_counter()-t0)*1000)
    time.sleep(2)
    rss.append(int([l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS")][0].split()[1]))
    p.terminate(); p.wait()
print(f"cold start to /readyz: median {statistics.median(times):.1f} ms (min {min(times):.1f}, max {max(times):.1f}) over 10 fresh homes")
print(f"idle RSS after 2 s: median {statistics.median(rss)/1024:.1f} MiB")
