"""Echo servers, one process each: `python -m bench.servers.<name> PORT [--stubs DIR]`.

Every server implements `prism.bench.v1.Echo/Unary` (bench/protos/echo.proto) by returning the
request, listens on 127.0.0.1:PORT, and runs until killed. grpcio and grpclib servers import the
stubs the runner generated into DIR; the prism server uses raw `bytes` and needs none.
"""
