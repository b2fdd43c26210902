package keyexport

// Golden keys derived from testKey(1) (bytes 0x01 to 0x20); see
// TestDeriveGolden. They were checked independently of this package with
// OpenSSL's HKDF, for example the nginx key name (its first 16 bytes):
//
//	openssl kdf -keylen 16 -kdfopt digest:SHA256 \
//	  -kdfopt hexkey:0102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20 \
//	  -kdfopt "info:tlsfarm ticket key export v1 nginx name" HKDF
const (
	goldenNginx   = "8cea84b61936032500e63d437405947f32775471c5b0d540bcf6f3e4eb5b0ae457074d9668c665be6962dad581539e044d8986a4e2d107e540064dec91d6906629b4afbca5c43a3e1aa133e8a7f52c43"
	goldenHAProxy = "944d7cc32ce4b2bca3705479a0c0cde55088bb05b1a32ebf2b322916cd40617d5271c0deb4f69359294a6625a08dcb9fe1a189306a640708943c123bd98b2619aba902dc30aac5498911f7e6f91cd0f3"
	goldenCaddy   = "4d267c1a46ec28ce8786dc0c7bff21de0767dc98777c9e63767979ded65dc0b5"
)
