package bus

import (
	"fmt"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go"
)

// EncodingHeader names the encoding of a message body that is not plain
// JSON ("zstd"): only replies to requests that accepted it carry one.
const EncodingHeader = "Content-Encoding"

// maxDecoded bounds what one compressed body may expand to (a set of far
// more than 10,000 edges is well below it).
const maxDecoded = 64 << 20

// The codecs are built on first use and shared: EncodeAll and DecodeAll
// are safe for concurrent use.
var (
	zEncoder = sync.OnceValue(func() *zstd.Encoder {
		e, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(1))
		if err != nil {
			panic(err) // only for invalid options
		}
		return e
	})
	zDecoder = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(maxDecoded), zstd.WithDecoderLowmem(true))
		if err != nil {
			panic(err) // only for invalid options
		}
		return d
	})
)

// Compress is b compressed with zstd, to send with EncodingHeader "zstd".
func Compress(b []byte) []byte { return zEncoder().EncodeAll(b, make([]byte, 0, len(b)/4)) }

// Body is m's body as plain JSON: decompressed when its EncodingHeader
// says so.
func Body(m *nats.Msg) ([]byte, error) {
	switch enc := m.Header.Get(EncodingHeader); enc {
	case "":
		return m.Data, nil
	case AcceptZstd:
		b, err := zDecoder().DecodeAll(m.Data, nil)
		if err != nil {
			return nil, fmt.Errorf("decompress %s: %w", m.Subject, err)
		}
		return b, nil
	default:
		return nil, fmt.Errorf("%s: unknown encoding %q", m.Subject, enc)
	}
}
