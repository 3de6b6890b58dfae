"""Waiting for something to happen, always with a deadline."""

import socket
import time


def poll_until(condition, deadline, what, check=None, interval=0.1):
    """Call CONDITION until it returns something true, and return that.

    Raises TimeoutError naming WHAT after DEADLINE seconds. CHECK runs before every try: let
    it raise when something the wait depends on has died, rather than wait for nothing.
    """
    give_up = time.monotonic() + deadline
    while True:
        if check:
            check()
        result = condition()
        if result:
            return result
        if time.monotonic() > give_up:
            raise TimeoutError(f"{what}: not after {deadline:g} s")
        time.sleep(interval)


def port_answers(port, host="127.0.0.1", timeout=1.0):
    """Does something accept connections on HOST:PORT?"""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False
