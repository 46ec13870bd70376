"""The generated protobuf messages, at their public import paths.

Each module here re-exports one protobuf package's messages as betterproto2 generated them
(from ``protos/``, into ``prism._proto``, which is generated code and not an import path to
rely on). The classes are the same objects, so ``isinstance`` and type URLs agree everywhere:

=================================  ==========================  ============================
module                             protobuf package            what
=================================  ==========================  ============================
``prism.protos.proxy.v1``          ``prism.proxy.v1``          the client API: ``Execute``
``prism.protos.data.v1``           ``prism.data.v1``           the data model: get, set, ...
``prism.protos.plugin.v1``         ``prism.plugin.v1``         the plugin protocol (RFC-008)
``prism.protos.config.v1``         ``prism.config.v1``         a plugin's config document
``prism.protos.admin.v1``          ``prism.admin.v1``          the admin API
``prism.protos.google.protobuf``   ``google.protobuf``         ``Any``, ``Struct``, ``Value``
=================================  ==========================  ============================

The health service's messages are in :mod:`prism.grpc.health`. To put a message in an ``Any``
and take it out, use :func:`prism.sdk.pack` and :func:`prism.sdk.unpack`.
"""
