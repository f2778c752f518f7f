#include "common/base/mapped_file.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>

#include <unistd.h>

namespace duet {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() /
          (name + "." + std::to_string(::getpid())))
      .string();
}

TEST(MappedFileTest, MapsContents) {
  std::string path = TempPath("duet_mapped");
  {
    std::ofstream out(path, std::ios::binary);
    out << "hello";
  }
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  ASSERT_EQ((*file)->bytes().size(), 5u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>((*file)->bytes().data()), 5), "hello");
  std::remove(path.c_str());
}

TEST(MappedFileTest, EmptyFileIsEmptySpan) {
  std::string path = TempPath("duet_mapped_empty");
  { std::ofstream out(path, std::ios::binary); }
  auto file = MappedFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->bytes().empty());
  std::remove(path.c_str());
}

TEST(MappedFileTest, Errors) {
  auto missing = MappedFile::Open("/nonexistent/duet/file");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("/nonexistent/duet/file"), std::string::npos);
  auto dir = MappedFile::Open(std::filesystem::temp_directory_path().string());
  EXPECT_EQ(dir.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace duet
