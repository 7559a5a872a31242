import datetime

from google.api import annotations_pb2 as _annotations_pb2
from google.protobuf import empty_pb2 as _empty_pb2
from google.protobuf import field_mask_pb2 as _field_mask_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf import wrappers_pb2 as _wrappers_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Genre(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    GENRE_UNSPECIFIED: _ClassVar[Genre]
    FICTION: _ClassVar[Genre]
    HISTORY: _ClassVar[Genre]
    POETRY: _ClassVar[Genre]
GENRE_UNSPECIFIED: Genre
FICTION: Genre
HISTORY: Genre
POETRY: Genre

class Author(_message.Message):
    __slots__ = ("name", "born")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BORN_FIELD_NUMBER: _ClassVar[int]
    name: str
    born: int
    def __init__(self, name: _Optional[str] = ..., born: _Optional[int] = ...) -> None: ...

class Book(_message.Message):
    __slots__ = ("name", "title", "author", "genre", "tags", "pages", "subtitle", "published", "labels", "copies", "in_print", "price", "cover")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PAGES_FIELD_NUMBER: _ClassVar[int]
    SUBTITLE_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    IN_PRINT_FIELD_NUMBER: _ClassVar[int]
    PRICE_FIELD_NUMBER: _ClassVar[int]
    COVER_FIELD_NUMBER: _ClassVar[int]
    name: str
    title: str
    author: Author
    genre: Genre
    tags: _containers.RepeatedScalarFieldContainer[str]
    pages: int
    subtitle: str
    published: _timestamp_pb2.Timestamp
    labels: _containers.ScalarMap[str, str]
    copies: int
    in_print: bool
    price: float
    cover: bytes
    def __init__(self, name: _Optional[str] = ..., title: _Optional[str] = ..., author: _Optional[_Union[Author, _Mapping]] = ..., genre: _Optional[_Union[Genre, str]] = ..., tags: _Optional[_Iterable[str]] = ..., pages: _Optional[int] = ..., subtitle: _Optional[str] = ..., published: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., copies: _Optional[int] = ..., in_print: _Optional[bool] = ..., price: _Optional[float] = ..., cover: _Optional[bytes] = ...) -> None: ...

class Shelf(_message.Message):
    __slots__ = ("id", "theme", "genre")
    ID_FIELD_NUMBER: _ClassVar[int]
    THEME_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    id: int
    theme: str
    genre: Genre
    def __init__(self, id: _Optional[int] = ..., theme: _Optional[str] = ..., genre: _Optional[_Union[Genre, str]] = ...) -> None: ...

class GetBookRequest(_message.Message):
    __slots__ = ("shelf", "book")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    shelf: int
    book: int
    def __init__(self, shelf: _Optional[int] = ..., book: _Optional[int] = ...) -> None: ...

class ListBooksRequest(_message.Message):
    __slots__ = ("shelf", "page_size", "tags", "author", "genre", "genres", "in_print", "min_pages", "published_after", "max_pages", "labels", "co_authors")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SHELF_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    AUTHOR_FIELD_NUMBER: _ClassVar[int]
    GENRE_FIELD_NUMBER: _ClassVar[int]
    GENRES_FIELD_NUMBER: _ClassVar[int]
    IN_PRINT_FIELD_NUMBER: _ClassVar[int]
    MIN_PAGES_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_AFTER_FIELD_NUMBER: _ClassVar[int]
    MAX_PAGES_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    CO_AUTHORS_FIELD_NUMBER: _ClassVar[int]
    shelf: int
    page_size: int
    tags: _containers.RepeatedScalarFieldContainer[str]
    author: Author
    genre: Genre
    genres: _containers.RepeatedScalarFieldContainer[Genre]
    in_print: bool
    min_pages: int
    published_after: _timestamp_pb2.Timestamp
    max_pages: _wrappers_pb2.Int32Value
    labels: _containers.ScalarMap[str, str]
    co_authors: _containers.RepeatedCompositeFieldContainer[Author]
    def __init__(self, shelf: _Optional[int] = ..., page_size: _Optional[int] = ..., tags: _Optional[_Iterable[str]] = ..., author: _Optional[_Union[Author, _Mapping]] = ..., genre: _Optional[_Union[Genre, str]] = ..., genres: _Optional[_Iterable[_Union[Genre, str]]] = ..., in_print: _Optional[bool] = ..., min_pages: _Optional[int] = ..., published_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_pages: _Optional[_Union[_wrappers_pb2.Int32Value, _Mapping]] = ..., labels: _Optional[_Mapping[str, str]] = ..., co_authors: _Optional[_Iterable[_Union[Author, _Mapping]]] = ...) -> None: ...

class ListBooksResponse(_message.Message):
    __slots__ = ("books", "next_page_token")
    BOOKS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    books: _containers.RepeatedCompositeFieldContainer[Book]
    next_page_token: str
    def __init__(self, books: _Optional[_Iterable[_Union[Book, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CreateBookRequest(_message.Message):
    __slots__ = ("shelf", "book", "request_id")
    SHELF_FIELD_NUMBER: _ClassVar[int]
    BOOK_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    shelf: int
    book: Book
    request_id: str
    def __init__(self, shelf: _Optional[int] = ..., book: _Optional[_Union[Book, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class UpdateBookRequest(_message.Message):
    __slots__ = ("book", "update_mask")
    BOOK_FIELD_NUMBER: _ClassVar[int]
    UPDATE_MASK_FIELD_NUMBER: _ClassVar[int]
    book: Book
    update_mask: _field_mask_pb2.FieldMask
    def __init__(self, book: _Optional[_Union[Book, _Mapping]] = ..., update_mask: _Optional[_Union[_field_mask_pb2.FieldMask, _Mapping]] = ...) -> None: ...

class DeleteBookRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class PublishBookRequest(_message.Message):
    __slots__ = ("id", "notify")
    ID_FIELD_NUMBER: _ClassVar[int]
    NOTIFY_FIELD_NUMBER: _ClassVar[int]
    id: str
    notify: bool
    def __init__(self, id: _Optional[str] = ..., notify: _Optional[bool] = ...) -> None: ...

class GetFileRequest(_message.Message):
    __slots__ = ("path",)
    PATH_FIELD_NUMBER: _ClassVar[int]
    path: str
    def __init__(self, path: _Optional[str] = ...) -> None: ...

class File(_message.Message):
    __slots__ = ("path", "size")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ...) -> None: ...

class CheckShelfRequest(_message.Message):
    __slots__ = ("shelf",)
    SHELF_FIELD_NUMBER: _ClassVar[int]
    shelf: int
    def __init__(self, shelf: _Optional[int] = ...) -> None: ...

class RestockRequest(_message.Message):
    __slots__ = ("name", "count")
    NAME_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    name: str
    count: int
    def __init__(self, name: _Optional[str] = ..., count: _Optional[int] = ...) -> None: ...

class RestockReply(_message.Message):
    __slots__ = ("in_stock",)
    IN_STOCK_FIELD_NUMBER: _ClassVar[int]
    in_stock: int
    def __init__(self, in_stock: _Optional[int] = ...) -> None: ...
