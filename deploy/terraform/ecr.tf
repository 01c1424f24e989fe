resource "aws_ecr_repository" "images" {
  for_each             = toset(["freeside", "finn", "dixie", "loa"])
  name                 = "${local.prefix}/${each.key}"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }
}
