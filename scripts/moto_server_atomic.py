"""moto's server, answering one request at a time.

moto checks a DynamoDB condition and then writes the item in two steps, so two
concurrent requests can both pass a condition that real DynamoDB lets only one
pass; the store's exactly-once tests would then fail now and then for moto's
sake. Same arguments as `moto_server -H <host> -p <port>`.
"""
import argparse
import threading

from moto.server import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple

parser = argparse.ArgumentParser()
parser.add_argument("-H", "--host", default="127.0.0.1")
parser.add_argument("-p", "--port", type=int, default=5000)
args = parser.parse_args()

moto = DomainDispatcherApplication(create_backend_app)
one_at_a_time = threading.Lock()


def app(environ, start_response):
    with one_at_a_time:
        return list(moto(environ, start_response))


run_simple(args.host, args.port, app, threaded=True)
