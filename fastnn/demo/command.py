"""`python -m fastnn.demo`: load (or first train) a network and serve the drawing page.

Exit codes as every fastnn command (fastnn.cli): 2 a bad flag, 1 a runtime
problem (unreadable model, a port in use, ...), 130 Ctrl-C, which is also
how the server is meant to stop.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import socket
import sys

from fastnn import cli

DEFAULT_PORT = 8028  # any free port works; --port 0 lets the OS choose one
BETTER_MODEL = ("python -m fastnn.train --preset best --save model.npz, then "
                "python -m fastnn.demo --model model.npz")


def _port(text):
    value = cli.integer(text, "a port number 0..65535")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0..65535 (0 = any free port), got {value}")
    return value


def build_parser():
    p = argparse.ArgumentParser(
        prog="python -m fastnn.demo",
        description="Draw a digit in your browser and watch the network classify it, live: "
                    "a local web page served by fastnn's own kernels.",
    )
    p.add_argument("--model", metavar="PATH",
                   help="checkpoint written by python -m fastnn.train --save (default: train "
                        "the default network first, a few seconds)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1, this computer only; "
                        "0.0.0.0 lets other machines on your network connect)")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT,
                   help=f"port to listen on; 0 = any free port (default: {DEFAULT_PORT})")
    p.add_argument("--no-browser", action="store_true",
                   help="do not open the page in the default browser")
    p.add_argument("--data-dir", metavar="DIR",
                   help="where the IDX files live or are cached (for training and the "
                        "random test digits)")
    return p


def load_model(args, out):
    """(params, dataset, about) from --model, or from training the default network."""
    from fastnn import model, predict

    if args.model:
        params, meta = model.load(args.model)
        history = meta.get("history") if isinstance(meta, dict) else None
        last = history[-1] if isinstance(history, list) and history else {}
        accuracy = last.get("test_accuracy") if isinstance(last, dict) else None
        return params, predict.dataset_of(meta), dict(
            source=os.path.basename(args.model),
            test_accuracy=accuracy if isinstance(accuracy, float) else None)
    from fastnn import train

    print("fastnn demo: no --model given, training the default network first "
          "(a few seconds)", file=out, flush=True)
    argv = ["--no-plot"] + (["--data-dir", args.data_dir] if args.data_dir else [])
    result, params = train.fit(train.parse_args(argv), out)
    print(f"fastnn demo: for a better network: {BETTER_MODEL}", file=out, flush=True)
    return params, "mnist", dict(source="the default network, trained just now",
                                 test_accuracy=result["test_accuracy"])


def load_test_set(args, dataset, out):
    """The test split for the random-digit button, or None (the button says why)."""
    from fastnn.data import DataError, load_mnist

    try:
        return load_mnist("test", args.data_dir, dataset)
    except DataError as e:
        first = str(e).splitlines()[0]
        print(f"fastnn demo: no test set ({first}); the random test digit button is off",
              file=out, flush=True)
        return None


def open_browser(url, out):
    import webbrowser

    # Without a display, webbrowser would fall back to a text browser that
    # takes over this terminal: leave it to the user instead.
    headless = sys.platform.startswith(("linux", "freebsd", "openbsd")) and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless or not webbrowser.open(url):
        print(f"fastnn demo: open {url} in a browser", file=out, flush=True)


def where(host, port):
    """(the page's URL, who can reach it) for a server bound to host:port."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None  # a name such as "localhost"
    if ip is not None and ip.is_unspecified:
        local = "[::1]" if ip.version == 6 else "127.0.0.1"
        return (f"http://{local}:{port}/", f"listening on all interfaces ({host}): other "
                "machines on your network can connect too")
    shown = f"[{host}]" if ip is not None and ip.version == 6 else host
    if (ip is not None and ip.is_loopback) or host == "localhost":
        reach = f"bound to {host}: only this computer can connect (--host 0.0.0.0 to share)"
    else:
        reach = f"bound to {host}: machines that can reach that address can connect"
    return f"http://{shown}:{port}/", reach


def run(args, out=None):
    from fastnn.data import class_names
    from fastnn.demo.engine import Engine
    from fastnn.demo.server import DemoServer, PageFilesMissing

    out = out or sys.stdout
    params, dataset, about = load_model(args, out)
    engine = Engine(params, class_names(dataset), load_test_set(args, dataset, out), about)
    engine.warmup()
    try:
        server = DemoServer((args.host, args.port), engine)
    except PageFilesMissing:
        raise
    except OSError as e:
        # a name that does not resolve, or an address this machine does not have, is the
        # host's fault; a port in use or reserved, the port's
        host = isinstance(e, socket.gaierror) or e.errno == errno.EADDRNOTAVAIL
        raise OSError(f"cannot listen on {args.host} port {args.port} ({e.strerror or e}); "
                      + ("pass a --host of this machine: 127.0.0.1 (the default), or 0.0.0.0 "
                         "for every network it is on" if host else
                         "pass another --port, or --port 0 for any free one")) from None
    with server:
        url, reach = where(args.host, server.server_address[1])
        sizes = "-".join(str(n) for n in [784] + [W.shape[0] for W, _ in params])
        print(f"fastnn demo: {sizes} net ({about['source']}) serving {url}", file=out)
        print(f"fastnn demo: {reach}; Ctrl-C stops it", file=out, flush=True)
        if not args.no_browser:
            open_browser(url, out)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            raise cli.Interrupted("demo stopped") from None


def main(argv=None):
    from fastnn.train import Diverged

    return cli.main(build_parser(), run, argv, (Diverged,))


if __name__ == "__main__":
    sys.exit(main())
