#!/usr/bin/env python3
"""outage.py: the shared API emulator (../shared/k8s) with an outage switch, for floodgate's
tests of an API server that goes away and comes back with its state (as a real one does: its
objects and resourceVersions live in etcd, not in the server process).

    python3 outage.py SHARED_K8S_DIR PORT KUBECONFIG

Same start-up as serve.py (prints "ready URL", writes the kubeconfig); SIGUSR1 takes the HTTP
server down (watches end, connections are refused), SIGUSR2 brings it back on the same port
with the same objects, through the emulator's own EmuThread.down()/up().
"""
import os, signal, sys, threading

sys.path.insert(0, sys.argv[1])
from emulator import EmuThread  # noqa: E402
from serve import KUBECONFIG  # noqa: E402


def main():
    port, kubeconfig = int(sys.argv[2]), sys.argv[3]
    emu = EmuThread(port)
    emu.start()
    emu.ready.wait(30)
    if emu.error or not emu.ready.is_set():
        print(f'emulator failed to start: {emu.error}', file=sys.stderr)
        return 1
    with open(kubeconfig, 'w') as f:
        f.write(KUBECONFIG.format(port=port))
    print(f'ready http://127.0.0.1:{port}', flush=True)
    stop = threading.Event()
    switch = []
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda *_: stop.set())
    # Handlers only record the request: the switch runs on this thread, outside the handler.
    signal.signal(signal.SIGUSR1, lambda *_: (switch.append('down'), stop.set()))
    signal.signal(signal.SIGUSR2, lambda *_: (switch.append('up'), stop.set()))
    while True:
        stop.wait()
        stop.clear()
        if not switch:
            break
        while switch:
            emu.call(emu.down if switch.pop(0) == 'down' else emu.up)
        print('switched', flush=True)
    emu.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
