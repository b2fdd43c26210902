module github.com/tlsfarm/tlsfarm

go 1.26
