"""The media types uploads take, their usual extensions and the other names
tools give them. Pure data, no imports: the uploads function (`lib/uploads/naming.py`)
and the upload command (`client/`) read the same table."""

# What the renderer takes, each with the extensions its objects may get: the
# first is used when the filename offers none of the others. An extension is
# what the CDN's visitors (and their tools) go by, so it is never the client's
# free choice: `clip.html` uploaded as video/mp4 is stored as `.mp4`.
# Subtitles and fonts are here because caption and text elements reference
# them by source_url like any other media.
EXTENSIONS: dict[str, tuple[str, ...]] = {
    "video/mp4": ("mp4", "m4v"),
    "video/quicktime": ("mov", "qt"),
    "video/webm": ("webm",),
    "image/png": ("png",),
    "image/jpeg": ("jpg", "jpeg", "jpe", "jfif"),
    "image/webp": ("webp",),
    "image/gif": ("gif",),
    "audio/mpeg": ("mp3", "mpga"),
    "audio/wav": ("wav", "wave"),
    "audio/aac": ("aac",),
    "audio/mp4": ("m4a", "mp4"),
    "audio/ogg": ("ogg", "oga", "opus"),
    "text/vtt": ("vtt",),
    "application/x-subrip": ("srt",),
    "font/ttf": ("ttf",),
    "font/otf": ("otf",),
    "font/woff": ("woff",),
    "font/woff2": ("woff2",),
}
# Each type's own extension.
CONTENT_TYPES: dict[str, str] = {name: extensions[0] for name, extensions in EXTENSIONS.items()}

# Names browsers and tools commonly report for the same formats (a File's
# `type` for a .wav is audio/x-wav in some browsers); they are stored under the
# canonical name above.
ALIASES: dict[str, str] = {
    "audio/x-wav": "audio/wav",
    "audio/wave": "audio/wav",
    "audio/vnd.wave": "audio/wav",
    "audio/mp3": "audio/mpeg",
    "audio/x-m4a": "audio/mp4",
    "image/jpg": "image/jpeg",
    "text/srt": "application/x-subrip",
}
