from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class OrderRequest(_message.Message):
    __slots__ = ("item", "quantity")
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    item: str
    quantity: int
    def __init__(self, item: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class OrderReply(_message.Message):
    __slots__ = ("order_id", "item", "quantity", "status")
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEM_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    order_id: str
    item: str
    quantity: int
    status: str
    def __init__(self, order_id: _Optional[str] = ..., item: _Optional[str] = ..., quantity: _Optional[int] = ..., status: _Optional[str] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
